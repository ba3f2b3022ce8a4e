"""A PyTorch diffusion UNet -> a jaxdiff checkpoint folder (`convert`), the library behind
`python -m convert_weights`.

The source is a guided-diffusion/ADM state dict (``.pt``/``.pth``/``.bin``), pytorch-fid's FID
Inception ``.pth``, or a diffusers ``UNet2DModel`` folder (``config.json`` + weights). The output
folder holds orbax params and the ``jaxdiff.json`` sidecar (docs/DESIGN.md), so samplers know the
architecture and the training schedule without being told again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxdiff.checkpoint import MAX_ABS_WEIGHT, save_pretrained
from jaxdiff.convert import torch_pickle
from jaxdiff.errors import CheckpointError, NotFIDInceptionError

CONVERTER_VERSION = "0.1.0"
ADM_SUFFIXES = (".pt", ".pth", ".bin")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# guided-diffusion create_gaussian_diffusion defaults (linear schedule, 1000 steps, float64)
ADM_DIFFUSION = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "schedule_dtype": "float64",
    "prediction_type": "epsilon",
}
# diffusers DDPMScheduler defaults (schedulers/scheduling_ddpm.py)
DDPM_SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "variance_type": "fixed_small",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "trained_betas": None,
}


@dataclass(frozen=True)
class Source:
    architecture: str  # "adm" | "unet2d" | "pipeline" | "component" (convert/pipeline.py)
    weights: Path  # the file whose tensors are converted (and hashed)
    folder: Path | None = None  # diffusers model folder


def detect_source(src) -> Source:
    """What SRC is, from the file system alone; errors say what was expected."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_dir():
        from jaxdiff.convert import pipeline

        if pipeline.is_pipeline(
            src
        ):  # model_index.json: every component, jaxdiff/convert/latent.py
            return Source("pipeline", src / pipeline.PIPELINE_INDEX, src)
        if pipeline.component_converter(src) is not None:  # a class with its own converter
            return Source("component", src, src)
        if not (src / "config.json").is_file():
            hint = ""
            if (src / "unet" / "config.json").is_file():
                hint = f"; it looks like a diffusers pipeline: pass {src / 'unet'}"
            raise CheckpointError(
                f"{src}: a folder without config.json, so not a diffusers UNet2DModel folder{hint}"
            )
        for name in DIFFUSERS_WEIGHTS:
            if (src / name).is_file():
                return Source("unet2d", refuse_lfs_pointer(src / name), src)
        raise CheckpointError(f"{src}: has config.json but neither of {list(DIFFUSERS_WEIGHTS)}")
    if src.suffix.lower() in ADM_SUFFIXES:
        return Source("adm", refuse_lfs_pointer(src))
    raise CheckpointError(
        f"{src}: unknown source; expected a guided-diffusion checkpoint "
        f"({', '.join(ADM_SUFFIXES)}) or a diffusers model folder with config.json"
    )


LFS_POINTER = b"version https://git-lfs"


def refuse_lfs_pointer(path: Path) -> Path:
    """`path`, unless it is a Git LFS pointer (a small text file standing in for the weights of a
    clone made without git-lfs), which would otherwise read as a corrupt checkpoint."""
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise CheckpointError(
            f"{path}: a Git LFS pointer file, not the weights; fetch them (git lfs pull) first"
        )
    return path


def sha256(path: Path, progress: bool = True) -> str:
    """Streamed, so a 2 GB checkpoint is hashed without being held in memory."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as f,
        torch_pickle.progress_bar(str(path), size, progress, "hashing") as tick,
    ):
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            tick(len(block))
    return h.hexdigest()


def _as_float32(state_dict: dict) -> dict:
    """fp16/bf16/fp64 checkpoints -> float32 (the stored parameter dtype); others untouched."""
    return {
        k: v.astype(np.float32, copy=False) if jnp.issubdtype(v.dtype, jnp.floating) else v
        for k, v in state_dict.items()
    }


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt {what} JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object")
    return obj


def adm_model_config(state_dict: dict, preset: str | None, config: Path | None):
    """``(model_config, flags)``: flags are the --config JSON's top level (diffusion flags)."""
    from jaxdiff.convert import presets

    if preset is not None:
        if preset not in presets.PRESETS:
            raise KeyError(f"unknown preset {preset!r}; known: {sorted(presets.PRESETS)}")
        return dict(presets.PRESETS[preset]), {}
    if config is None:
        return presets.infer_adm_config(state_dict), {}
    flags = _read_json(config, "--config")
    if flags and set(flags) <= set(presets.INVISIBLE_FLAGS) | {"image_size", "dropout"}:
        # only what the weights cannot show: the rest is read from the shapes
        return presets.infer_adm_config(state_dict, extra=flags), flags
    return presets.adm_config_from_json(flags), flags


def adm_diffusion(model_config: dict, flags: dict, preset: str | None = None) -> dict:
    """guided-diffusion's create_gaussian_diffusion as configured by the create_model flags
    (diffusion_steps, noise_schedule, sigma_small), defaulting to linear 1000 steps."""
    if preset is not None:
        from jaxdiff.convert import presets

        return {**ADM_DIFFUSION, **presets.PRESET_DIFFUSION[preset]}
    steps = int(flags.get("diffusion_steps", 1000))
    schedule = flags.get("noise_schedule", "linear")
    if model_config["out_channels"] == 2 * model_config["in_channels"]:
        variance = "learned_range"
    else:
        variance = "fixed_small" if flags.get("sigma_small") else "fixed_large"
    out = {**ADM_DIFFUSION, "num_timesteps": steps, "beta_schedule": schedule}
    out["variance_type"] = variance
    if schedule == "linear":  # get_named_beta_schedule: scaled so any T matches T = 1000
        out["beta_start"], out["beta_end"] = 1000 / steps * 1e-4, 1000 / steps * 0.02
    else:
        del out["beta_start"], out["beta_end"]
    return out


def scheduler_config_path(folder: Path) -> Path | None:
    """The scheduler config beside the UNet, or in the HF pipeline layout unet/ + scheduler/."""
    for path in (
        folder / "scheduler_config.json",
        folder.parent / "scheduler" / "scheduler_config.json",
    ):
        if path.is_file():
            return path
    return None


def diffusers_diffusion(folder: Path) -> tuple[dict, str | None]:
    path = scheduler_config_path(folder)
    cfg = dict(DDPM_SCHEDULER_DEFAULTS)
    if path is not None:
        cfg.update({k: v for k, v in _read_json(path, "scheduler").items() if k in cfg})
    cosine = cfg["beta_schedule"] == "squaredcos_cap_v2"  # = guided-diffusion's cosine
    out = {
        "num_timesteps": int(cfg["num_train_timesteps"]),
        "beta_schedule": "cosine" if cosine else cfg["beta_schedule"],
        "beta_start": float(cfg["beta_start"]),
        "beta_end": float(cfg["beta_end"]),
        "variance_type": cfg["variance_type"],
        "schedule_dtype": "float32",  # diffusers builds betas in torch.float32
        "prediction_type": cfg["prediction_type"],
        "clip_sample": bool(cfg["clip_sample"]),
    }
    if cosine:
        del out["beta_start"], out["beta_end"]
    if cfg["trained_betas"] is not None:
        out["trained_betas"] = [float(b) for b in cfg["trained_betas"]]
    return out, (str(path) if path else None)


def _load_diffusers_weights(path: Path, key: str | None, progress: bool) -> tuple[dict, str]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from e
    fmt = torch_pickle.checkpoint_format(path)
    return torch_pickle.load_state_dict(path, key, progress=progress), fmt


def read_source(
    src,
    *,
    preset: str | None = None,
    config=None,
    key: str | None = None,
    progress: bool = True,
    kind: str | None = None,
    allow_large_weights: bool = False,
    check: bool = True,
) -> tuple[dict, dict]:
    """``(params, meta)`` of SRC in memory: every check `convert` makes (source kind, keys and
    shapes, finite weights, |w| <= MAX_ABS_WEIGHT unless `allow_large_weights`), nothing
    written (`check=False` leaves the weights' check to `save_pretrained`). `meta` is the sidecar
    `convert` would write, less what saving fills in."""
    from jaxdiff.checkpoint import check_weights
    from jaxdiff.convert import fid_inception

    if kind not in (None, "diffusion", fid_inception.ARCHITECTURE):
        raise ValueError(f"unknown --kind {kind!r}; known: diffusion, fid_inception")
    source = detect_source(src)
    if source.architecture in ("pipeline", "component"):
        raise ValueError(
            f"{src}: a diffusers pipeline or latent-model component folder is converted to disk, "
            "one folder per component: python -m convert_weights FOLDER --out DIR"
        )
    if kind == fid_inception.ARCHITECTURE and source.architecture != "adm":
        raise NotFIDInceptionError(f"{src}: a diffusers folder, not the FID Inception .pth")
    max_abs = None if allow_large_weights else MAX_ABS_WEIGHT
    if source.architecture == "adm":
        from jaxdiff.convert import adm

        fmt = torch_pickle.checkpoint_format(source.weights)
        sd = _as_float32(torch_pickle.load_state_dict(source.weights, key, progress=progress))
        if kind == fid_inception.ARCHITECTURE or (
            kind is None and fid_inception.looks_like_inception(sd)
        ):
            params = fid_inception.state_dict_to_params(sd, str(source.weights))
            file = {"file": source.weights.name, "format": fmt}
            file["sha256"] = sha256(source.weights, progress)
            if check:
                check_weights(params, max_abs, what=source.weights.name)
            return params, fid_inception.meta(file, CONVERTER_VERSION)
        model_config, flags = adm_model_config(sd, preset, Path(config) if config else None)
        params = adm.state_dict_to_params(sd, model_config, what=str(source.weights))
        diffusion, extra = adm_diffusion(model_config, flags, preset), {}
    else:
        from jaxdiff.convert import unet2d

        if preset is not None or config is not None:
            raise ValueError(
                f"{source.folder}: --preset/--config apply to ADM checkpoints; a diffusers "
                "folder brings its own config.json"
            )
        cfg = _read_json(source.folder / "config.json", "diffusers config")
        model_config = {k: v for k, v in cfg.items() if not k.startswith("_")}
        sd, fmt = _load_diffusers_weights(source.weights, key, progress)
        params = unet2d.state_dict_to_params(
            _as_float32(sd), model_config, what=str(source.weights)
        )
        diffusion, scheduler = diffusers_diffusion(source.folder)
        extra = {"scheduler_config": scheduler and os.path.relpath(scheduler, source.folder)}
        if "_diffusers_version" in cfg:
            extra["diffusers_version"] = cfg["_diffusers_version"]
    meta = {
        "architecture": source.architecture,
        "model_config": model_config,
        "diffusion": diffusion,
        "source": {
            "file": source.weights.name,
            "sha256": sha256(source.weights, progress),
            "format": fmt,
            **extra,
        },
        "converter_version": CONVERTER_VERSION,
    }
    if check:
        check_weights(params, max_abs, what=source.weights.name)
    return params, meta


def convert(
    src,
    out,
    *,
    preset: str | None = None,
    config=None,
    key: str | None = None,
    force: bool = False,
    progress: bool = True,
    kind: str | None = None,
    allow_large_weights: bool = False,
    config_folder=None,
    vq_config=None,
) -> dict:
    """Convert SRC into the jaxdiff checkpoint folder OUT; returns the sidecar dict written.

    An original single-file checkpoint (`.ckpt` / `.safetensors`, told apart by its keys) becomes
    a converted pipeline folder: a Stable Diffusion file needs `config_folder` (a diffusers
    pipeline folder of the same model, whose configs lay out the weights), a CompVis LDM `.ckpt`
    needs `config` (the UNet's kwargs) and `vq_config` (the VQModel config.json).

    `kind="fid_inception"` insists on pytorch-fid's FID Inception (NotFIDInceptionError
    otherwise); without it, a file with Inception keys is converted as one. Non-finite weights
    are always refused, magnitudes above jaxdiff.checkpoint.MAX_ABS_WEIGHT unless
    `allow_large_weights` (both are what a corrupted file decodes to); `read_source` does the
    reading and checking in memory."""
    out = Path(out)
    if out.exists() and not force:  # before the (possibly long) read
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    single = _single_file_kind(src)
    if single is not None:
        return _convert_single_file(
            single, src, out, config=config, config_folder=config_folder, vq_config=vq_config,
            force=force, progress=progress, allow_large_weights=allow_large_weights,
        )  # fmt: skip
    source = detect_source(src)
    if source.architecture in ("pipeline", "component"):
        from jaxdiff.convert import pipeline

        if preset is not None or config is not None or key is not None or kind is not None:
            raise ValueError(
                f"{src}: --preset/--config/--key/--kind apply to single checkpoint files; a "
                "diffusers folder brings its own config.json"
            )
        options = dict(force=force, progress=progress, allow_large_weights=allow_large_weights)
        if source.architecture == "pipeline":
            return pipeline.convert_pipeline(source.folder, out, **options)
        return pipeline.convert_component(source.folder, out, **options)
    params, meta = read_source(
        src,
        preset=preset,
        config=config,
        key=key,
        progress=progress,
        kind=kind,
        allow_large_weights=allow_large_weights,
        check=False,  # save_pretrained checks them
    )
    max_abs = None if allow_large_weights else MAX_ABS_WEIGHT
    save_pretrained(out, params, meta, force=force, max_abs=max_abs)
    return json.loads((out / "jaxdiff.json").read_text())


SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")


def _single_file_kind(src) -> str | None:
    """ "sd" / "ldm" for an original single-file checkpoint, else None (a guided-diffusion `.pt`
    or a diffusers folder take the other paths)."""
    src = Path(src)
    if not src.is_file() or src.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return None
    from jaxdiff.convert import sd_single_file

    refuse_lfs_pointer(src)
    return sd_single_file.single_file_kind(src)


def _convert_single_file(kind, src, out, *, config, config_folder, vq_config, **options) -> dict:
    if kind == "sd":
        from jaxdiff.convert import sd_single_file

        if config_folder is None:
            raise ValueError(
                f"{src}: a Stable Diffusion single file; pass --config_folder, a diffusers "
                "pipeline folder of the same model (its config.json files lay out the weights)"
            )
        return sd_single_file.convert_single_file(src, out, Path(config_folder), **options)
    from jaxdiff.convert.ldm_single_file import convert_ldm_file

    if config is None or vq_config is None:
        raise ValueError(
            f"{src}: a CompVis LDM checkpoint; pass --config (the UNet's kwargs, JSON) and "
            "--vq_config (the first stage's VQModel config.json)"
        )
    return convert_ldm_file(src, out, unet_config=config, vq_config=vq_config, **options)
