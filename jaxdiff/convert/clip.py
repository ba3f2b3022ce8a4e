"""transformers `CLIPTextModel` state dict <-> jaxdiff "clip_text" params, and the tokenizer files.

transformers < 5 saves the text encoder's tensors as `text_model.embeddings...`; transformers >= 5
writes the same tensors without that prefix. Both load; a state dict mixing the two, or holding
anything else, fails with every odd key named. The `position_ids` buffer older versions saved is
not a parameter and is dropped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from jaxdiff.convert import keymap
from jaxdiff.convert.pipeline import copy_files, register_component
from jaxdiff.errors import CheckpointError
from jaxdiff.models import clip

ARCHITECTURE = "clip_text"
PREFIX = "text_model."
BUFFERS = ("embeddings.position_ids",)
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")


def layout(model_config: dict) -> list[keymap.Entry]:
    return keymap.model_layout(ARCHITECTURE, model_config)


def strip_prefix(state_dict: dict) -> tuple[dict, str]:
    """Keys without `text_model.` (and without the position_ids buffer); returns the prefix
    found ("text_model." or "") so a round trip can write the layout it read."""
    prefixed = [k for k in state_dict if k.startswith(PREFIX)]
    if prefixed and len(prefixed) != len(state_dict):
        odd = sorted(k for k in state_dict if not k.startswith(PREFIX))
        raise CheckpointError(
            f"CLIP text encoder: keys with and without the {PREFIX!r} prefix mixed: {odd[:5]}"
        )
    prefix = PREFIX if prefixed else ""
    out = {k[len(prefix) :]: v for k, v in state_dict.items()}
    out = {k: v for k, v in out.items() if k not in BUFFERS}
    return out, prefix


def state_dict_to_params(
    state_dict: dict[str, np.ndarray], model_config: dict, what: str = "CLIP text encoder"
) -> dict:
    """CLIPTextModel state dict (with or without `text_model.`) -> nested float32 numpy params."""
    stripped, _ = strip_prefix(state_dict)
    return keymap.state_dict_to_params(stripped, layout(model_config), what)


def params_to_state_dict(params, model_config: dict, prefix: str = PREFIX) -> dict:
    """params -> CLIPTextModel state dict; prefix "text_model." (transformers < 5) or ""."""
    sd = keymap.params_to_state_dict(params, layout(model_config))
    return {prefix + k: v for k, v in sd.items()}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (a CLIP text encoder folder has one)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from e
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "clip_text_model" and "CLIPTextModel" not in archs:
        raise CheckpointError(
            f"{path}: architectures={archs}, model_type={cfg.get('model_type')!r}; "
            "expected a CLIPTextModel (clip_text_model)"
        )
    return clip.normalize_config(cfg)


def load_state_dict(folder: Path, progress: bool = False) -> tuple[dict, Path, str]:
    from jaxdiff.convert import torch_pickle

    for name in WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                return load_file(str(path)), path, "safetensors"
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{path}: corrupt or unreadable safetensors ({e})") from e
        fmt = torch_pickle.checkpoint_format(path)
        return torch_pickle.load_state_dict(path, progress=progress), path, fmt
    raise FileNotFoundError(f"{folder}: none of {list(WEIGHTS)} (the text encoder's weights)")


def convert_clip_text(folder, progress: bool = False) -> tuple[dict, dict]:
    """A `text_encoder/` folder (config.json + model.safetensors or pytorch_model.bin) ->
    (params, meta) for `jaxdiff.checkpoint.save_pretrained`."""
    from jaxdiff.convert.core import CONVERTER_VERSION, sha256

    folder = Path(folder)
    cfg = read_config(folder)
    sd, path, fmt = load_state_dict(folder, progress)
    _, prefix = strip_prefix(sd)
    params = state_dict_to_params(sd, cfg, what=str(path))
    meta = {
        "architecture": ARCHITECTURE,
        "model_config": cfg,
        "diffusion": {},  # not a diffusion model (models.load_pretrained reads the entry)
        "source": {
            "file": path.name,
            "sha256": sha256(path, progress),
            "format": fmt,
            "key_prefix": prefix,
        },
        "converter_version": CONVERTER_VERSION,
    }
    return params, meta


def copy_tokenizer(folder, out) -> Path:
    """Copy a `tokenizer/` folder's vocab.json + merges.txt (+ its config) into OUT: the
    tokenizer needs nothing else, and loads from there (`CLIPTokenizer.from_folder`)."""
    from jaxdiff.models.clip_tokenizer import CLIPTokenizer

    folder, out = Path(folder), Path(out)
    CLIPTokenizer.from_folder(folder)  # refuse a broken tokenizer before writing anything
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES + TOKENIZER_OPTIONAL:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    return out


def convert_text_encoder(
    folder, out, *, force: bool = False, progress: bool = False, allow_large_weights: bool = False
) -> dict:
    """A `text_encoder/` folder -> the checkpoint folder OUT; returns the sidecar written (the
    pipeline converter's signature for a component class)."""
    from jaxdiff.checkpoint import MAX_ABS_WEIGHT, read_meta, save_pretrained

    params, meta = convert_clip_text(folder, progress)
    max_abs = None if allow_large_weights else MAX_ABS_WEIGHT
    save_pretrained(out, params, meta, force=force, max_abs=max_abs)
    return read_meta(out)


# A pipeline folder's text_encoder/ and tokenizer/ (jaxdiff.convert.pipeline).
register_component("CLIPTextModel", architecture=ARCHITECTURE)(convert_text_encoder)
register_component("CLIPTokenizer", "CLIPTokenizerFast", kind="files")(
    copy_files(TOKENIZER_FILES + TOKENIZER_OPTIONAL)
)
