"""Original single-file Stable Diffusion checkpoints (`.ckpt` through the safe pickle reader, or
`.safetensors`) -> diffusers state dicts, and from there the pipeline converter.

The file holds `model.diffusion_model.*` (the openaimodel UNet), `first_stage_model.*` (the
autoencoder) and `cond_stage_model.transformer.*` (the CLIP text encoder; SD 2.x:
`cond_stage_model.model.*`, OpenCLIP's), plus the LDM
training buffers (betas, alphas_cumprod, ...), which are not parameters. The key mapping is
diffusers' (loaders/single_file_utils.py: convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint) written as one rename per key, so a key
it does not know is named instead of dropped. Sizes and options the weights cannot show (head
counts, the scheduler) come from a diffusers pipeline folder's configs, as diffusers'
`from_single_file(..., config=FOLDER)` takes them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from jaxdiff.errors import CheckpointError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIXES = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP's text tower
OPEN_CLIP_UNUSED = ("text_projection", "logit_scale")  # CLIPTextModel has neither
OPEN_CLIP_FIXED = {
    "positional_embedding": "embeddings.position_embedding.weight",
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
OPEN_CLIP_LAYER = (
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
)
# LDM's DDPM buffers, EMA copies and the like: in the file, not parameters of any component
IGNORED = re.compile(
    r"^(betas|alphas_cumprod(_prev)?|sqrt_\w+|log_one_minus_alphas_cumprod|posterior_\w+|"
    r"logvar|lvlb_weights|model_ema\..*|cond_stage_model\.transformer\..*position_ids)$"
)
RESNET = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
)
UNET_FIXED = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
VAE_FIXED = {"norm_out": "conv_norm_out"}
VAE_ATTENTION = (
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
)


def _resnet(rest: str) -> str:
    for old, new in RESNET:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def unet_key(key: str, layers_per_block: int) -> str | None:
    """One openaimodel UNet key (without `model.diffusion_model.`) -> its diffusers key."""
    per = layers_per_block + 1
    module, _, leaf = key.rpartition(".")
    if module in UNET_FIXED:
        return f"{UNET_FIXED[module]}.{leaf}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.0\.op\.(weight|bias)", key):
        return f"down_blocks.{(int(m[1]) - 1) // per}.downsamplers.0.conv.{m[2]}"
    if m := re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", key):
        i = int(m[1]) - 1
        b, j = divmod(i, per)
        if m[2] == "0":
            return f"down_blocks.{b}.resnets.{j}.{_resnet(m[3])}"
        return f"down_blocks.{b}.attentions.{j}.{m[3]}"
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", key):
        if m[1] == "1":
            return f"mid_block.attentions.0.{m[2]}"
        return f"mid_block.resnets.{int(m[1]) // 2}.{_resnet(m[2])}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.([12])\.conv\.(weight|bias)", key):
        return f"up_blocks.{int(m[1]) // per}.upsamplers.0.conv.{m[3]}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.([01])\.(.+)", key):
        b, j = divmod(int(m[1]), per)
        if m[2] == "0":
            return f"up_blocks.{b}.resnets.{j}.{_resnet(m[3])}"
        return f"up_blocks.{b}.attentions.{j}.{m[3]}"
    return None


def vae_key(key: str, num_up_blocks: int) -> str | None:
    """One LDM autoencoder key (without `first_stage_model.`) -> its diffusers key."""
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv", "quantize"):
        return key
    if part not in ("encoder", "decoder"):
        return None
    module, _, leaf = rest.rpartition(".")
    if module in VAE_FIXED:
        return f"{part}.{VAE_FIXED[module]}.{leaf}"
    if module in ("conv_in", "conv_out"):
        return key
    rest = rest.replace("nin_shortcut.", "conv_shortcut.")
    if m := re.fullmatch(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest):
        return f"{part}.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.(.+)", rest):
        return f"{part}.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    if m := re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", rest):
        return f"{part}.up_blocks.{num_up_blocks - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.(.+)", rest):
        return f"{part}.up_blocks.{num_up_blocks - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    if m := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        return f"{part}.mid_block.resnets.{int(m[1]) - 1}.{m[2]}"
    if m := re.fullmatch(r"mid\.attn_1\.(.+)", rest):
        for old, new in VAE_ATTENTION:
            if m[1].startswith(old):
                return f"{part}.mid_block.attentions.0.{new}{m[1][len(old) :]}"
    return None


def _map(sd: dict, rename, what: str) -> dict:
    out, unknown = {}, []
    for key, value in sd.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
            continue
        if new in out:
            raise CheckpointError(f"{what}: two keys map to {new}")
        out[new] = value
    if unknown:
        raise CheckpointError(f"{what}: keys the single-file mapping does not know: {unknown[:8]}")
    return out


def unet_to_diffusers(sd: dict, unet_config: dict, what: str = "UNet") -> dict:
    """openaimodel UNet keys -> UNet2DConditionModel keys (shapes unchanged)."""
    lpb = unet_config.get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise CheckpointError(f"{what}: layers_per_block={lpb!r}; one int per model is supported")
    return _map(sd, lambda k: unet_key(k, lpb), what)


def vae_to_diffusers(sd: dict, vae_config: dict, what: str = "first stage") -> dict:
    """LDM autoencoder keys -> AutoencoderKL / VQModel keys; the mid attention's 1x1-conv
    weights become linear ones."""
    n = len(vae_config.get("up_block_types", ()))
    out = _map(sd, lambda k: vae_key(k, n), what)
    for key, value in out.items():
        if ".mid_block.attentions.0.to_" in key and key.endswith(".weight") and value.ndim > 2:
            out[key] = np.asarray(value).reshape(value.shape[:2])
    return out


def split(state_dict: dict, what: str = "single-file checkpoint") -> dict[str, dict]:
    """{"unet", "vae", "text_encoder"} state dicts (component prefixes removed); every key that
    is neither a component's nor a known buffer is an error naming it."""
    parts: dict[str, dict] = {"unet": {}, "vae": {}, "text_encoder": {}, "open_clip": {}}
    unknown = []
    for key, value in state_dict.items():
        if IGNORED.match(key):
            continue
        if key.startswith(UNET_PREFIX):
            parts["unet"][key[len(UNET_PREFIX) :]] = value
            continue
        prefix = next((p for p in VAE_PREFIXES if key.startswith(p)), None)
        if prefix:
            parts["vae"][key[len(prefix) :]] = value
            continue
        prefix = next((p for p in CLIP_PREFIXES if key.startswith(p)), None)
        if prefix:
            parts["text_encoder"][key[len(prefix) :]] = value
            continue
        if key.startswith(OPEN_CLIP_PREFIX):
            parts["open_clip"][key[len(OPEN_CLIP_PREFIX) :]] = value
            continue
        unknown.append(key)
    if unknown:
        raise CheckpointError(f"{what}: keys of no component: {unknown[:8]}")
    if not parts["unet"]:
        raise CheckpointError(f"{what}: no {UNET_PREFIX}* keys: not a Stable Diffusion checkpoint")
    return parts


def open_clip_to_diffusers(sd: dict, text_config: dict, what: str = "text encoder") -> dict:
    """OpenCLIP text keys (SD 2.x originals) -> CLIPTextModel keys, as diffusers'
    convert_open_clip_checkpoint: in_proj split into q, k, v; the layers past the config's
    num_hidden_layers (SD 2.x conditions on the penultimate layer, so diffusers' config has one
    layer fewer than the file) and text_projection / logit_scale are not used."""
    layers = int(text_config.get("num_hidden_layers", 12))
    out, unknown = {}, []
    for key, value in sd.items():
        if key in OPEN_CLIP_UNUSED:
            continue
        if key in OPEN_CLIP_FIXED:
            out["text_model." + OPEN_CLIP_FIXED[key]] = value
            continue
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
        if m is None:
            unknown.append(key)
            continue
        if int(m[1]) >= layers:
            continue
        dst, rest = f"text_model.encoder.layers.{m[1]}.", m[2]
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            leaf = rest.rpartition("_")[2]
            value = np.asarray(value)
            if value.shape[0] % 3:
                raise CheckpointError(f"{what}: {key} of shape {value.shape} is not q, k, v")
            for name, part in zip("qkv", np.split(value, 3)):
                out[f"{dst}self_attn.{name}_proj.{leaf}"] = part
            continue
        new = next((n + rest[len(o) :] for o, n in OPEN_CLIP_LAYER if rest.startswith(o)), None)
        if new is None:
            unknown.append(key)
        else:
            out[dst + new] = value
    if unknown:
        raise CheckpointError(f"{what}: OpenCLIP keys the mapping does not know: {unknown[:8]}")
    return out


def single_file_kind(path) -> str | None:
    """ "sd" (a Stable Diffusion single file: UNet, maybe first stage and text encoder), "ldm"
    (a CompVis latent-diffusion checkpoint: UNet, first stage, betas, no text encoder) or None,
    from the file's key names (a safetensors header alone; a .ckpt is read)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            keys = set(f.keys())
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        keys = set(read_state_dict(path))
    else:
        return None
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return None
    text = any(k.startswith((*CLIP_PREFIXES, OPEN_CLIP_PREFIX)) for k in keys)
    first = any(k.startswith(VAE_PREFIXES) for k in keys)
    return "ldm" if first and "betas" in keys and not text else "sd"


def read_state_dict(path: Path, progress: bool = False) -> dict:
    """The file's tensors as numpy: safetensors, or a .ckpt through the safe pickle reader
    (the Lightning `state_dict` entry)."""
    from jaxdiff.convert import torch_pickle

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors ({e})") from e
    return torch_pickle.load_state_dict(path, progress=progress)


def to_diffusers(path, config_folder, progress: bool = False) -> dict[str, dict]:
    """{component: diffusers state dict} of a single-file checkpoint, laid out by the configs
    of `config_folder` (a diffusers pipeline folder; its weights, if any, are not read)."""
    import json

    path, config_folder = Path(path), Path(config_folder)
    parts = split(read_state_dict(path, progress), str(path))

    def config(name):
        file = config_folder / name / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{config_folder}: no {name}/config.json for the layout")
        return json.loads(file.read_text())

    out = {"unet": unet_to_diffusers(parts["unet"], config("unet"), f"{path}: UNet")}
    if parts["vae"]:
        out["vae"] = vae_to_diffusers(parts["vae"], config("vae"), f"{path}: first stage")
    if parts["text_encoder"] and parts["open_clip"]:
        raise CheckpointError(f"{path}: both a CLIP and an OpenCLIP text encoder")
    if parts["text_encoder"]:
        out["text_encoder"] = parts["text_encoder"]  # CLIPTextModel keys already
    elif parts["open_clip"]:
        text_cfg = config("text_encoder")
        out["text_encoder"] = open_clip_to_diffusers(
            parts["open_clip"], text_cfg, f"{path}: text encoder"
        )
    return out


WEIGHT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}


def as_pipeline_folder(path, config_folder, folder, progress: bool = False) -> Path:
    """Write the single file as a diffusers pipeline folder FOLDER: the configs (and tokenizer,
    scheduler) of `config_folder` with the file's weights, for the pipeline converter."""
    from safetensors.numpy import save_file

    config_folder, folder = Path(config_folder), Path(folder)
    parts = to_diffusers(path, config_folder, progress)
    if not (config_folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{config_folder}: no model_index.json (a pipeline folder)")
    shutil.copytree(
        config_folder,
        folder,
        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.ckpt", "*.index.json"),
    )
    for name, sd in parts.items():
        arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in sd.items()}
        save_file(arrays, str(folder / name / WEIGHT_FILES[name]))
    return folder


def convert_single_file(path, out, config_folder, **options) -> dict:
    """A single-file checkpoint -> the converted pipeline folder OUT (what
    `jaxdiff.convert.core.convert` makes of a diffusers pipeline folder)."""
    from jaxdiff.convert.core import convert

    with tempfile.TemporaryDirectory(prefix="jaxdiff-single-file-") as tmp:
        folder = as_pipeline_folder(path, config_folder, Path(tmp) / Path(path).stem)
        return convert(folder, out, **options)
