"""diffusers latent-diffusion components -> jaxdiff checkpoints: the key maps of
`UNet2DConditionModel` ("sd_unet"), `AutoencoderKL` ("autoencoder_kl") and `VQModel`
("vq_model"), their folder converters, and the scheduler folders a pipeline copies.

The Flax module names are the torch names with "." written "_", so each map is a rename plus
layouts, driven by the model's own parameter tree (keymap.py): every missing, unexpected or
mis-shaped key (a checkpoint that does not match its config.json) is named at once. The first
stages also take the old attention names (query/key/value/proj_attn, 1x1-conv shaped) of
checkpoints written before diffusers 0.14, as `unet2d.py` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxdiff.checkpoint import MAX_ABS_WEIGHT, save_pretrained
from jaxdiff.convert import core, keymap, unet2d
from jaxdiff.convert.pipeline import copy_files, read_json, register_component
from jaxdiff.errors import CheckpointError

SD_UNET_KEEP = ("linear_1", "linear_2")  # time_embedding.linear_1 is one torch name
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
)
SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "UniPCMultistepScheduler",
)
FIRST_STAGE = {"AutoencoderKL": "autoencoder_kl", "VQModel": "vq_model"}


def layout(architecture: str, model_config: dict) -> list[keymap.Entry]:
    keep = SD_UNET_KEEP if architecture == "sd_unet" else ()
    return keymap.model_layout(architecture, model_config, keep=keep)


def state_dict_to_params(
    state_dict: dict[str, np.ndarray], architecture: str, model_config: dict, what: str
) -> dict:
    """A diffusers state dict -> nested float32 numpy params of `architecture`."""
    if architecture != "sd_unet":
        state_dict = unet2d.rename_old_keys(state_dict)
    return keymap.state_dict_to_params(state_dict, layout(architecture, model_config), what)


def params_to_state_dict(params, architecture: str, model_config: dict) -> dict[str, np.ndarray]:
    """The inverse: params -> the state dict diffusers loads (current key names)."""
    return keymap.params_to_state_dict(params, layout(architecture, model_config))


def find_weights(folder: Path, names=DIFFUSERS_WEIGHTS) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: has config.json but none of the weight files {list(names)}")


def read_weights(path: Path, progress: bool) -> tuple[dict, str, dict]:
    """(state dict, format, {shard file: sha256}) of a weights file or a safetensors index."""
    if not path.name.endswith(".index.json"):
        sd, fmt = core._load_diffusers_weights(path, None, progress)
        return sd, fmt, {}
    weight_map = read_json(path, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: no weight_map")
    state_dict, shards = {}, {}
    for shard in sorted(set(weight_map.values())):
        file = path.parent / shard
        if not file.is_file():
            raise CheckpointError(f"{path}: its shard {shard} is missing")
        state_dict.update(core._load_diffusers_weights(file, None, progress)[0])
        shards[shard] = core.sha256(file, progress)
    return state_dict, "safetensors-sharded", shards


def convert_model_folder(
    folder: Path,
    out: Path,
    *,
    architecture: str,
    to_params: Callable[[dict, dict, str], dict],
    diffusion: dict,
    weight_names=DIFFUSERS_WEIGHTS,
    model_config: dict | None = None,
    extra_source: dict | None = None,
    force: bool = False,
    progress: bool = True,
    allow_large_weights: bool = False,
) -> dict:
    """A model folder (config.json + weights) -> the checkpoint OUT; the sidecar written.

    `to_params(state_dict, model_config, what)` is the key map; `model_config` defaults to
    config.json without its "_" fields. Shared by every "model" component converter."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    cfg = read_json(folder / "config.json", "model config")
    if model_config is None:
        model_config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    weights = find_weights(folder, weight_names)
    sd, fmt, shards = read_weights(weights, progress)
    params = to_params(core._as_float32(sd), model_config, str(weights))
    source = {"file": weights.name, "sha256": core.sha256(weights, progress), "format": fmt}
    if shards:
        source["shards"] = shards
    if "_class_name" in cfg:
        source["class"] = cfg["_class_name"]
    if "_diffusers_version" in cfg:
        source["diffusers_version"] = cfg["_diffusers_version"]
    meta = {
        "architecture": architecture,
        "model_config": model_config,
        "diffusion": diffusion,
        "source": {**source, **(extra_source or {})},
        "converter_version": core.CONVERTER_VERSION,
    }
    max_abs = None if allow_large_weights else MAX_ABS_WEIGHT
    save_pretrained(out, params, meta, force=force, max_abs=max_abs)
    return read_json(out / "jaxdiff.json", "sidecar")


def sd_diffusion(folder: Path) -> tuple[dict, str]:
    """The UNet's noise schedule from its scheduler config (beside it or ../scheduler/): the
    fields the samplers read, and the whole scheduler config under "scheduler" (prediction_type,
    steps_offset, timestep_spacing, set_alpha_to_one, ...)."""
    path = core.scheduler_config_path(folder)
    if path is None:
        raise CheckpointError(
            f"{folder}: no scheduler config (scheduler_config.json beside it or "
            "../scheduler/scheduler_config.json): the noise schedule and the prediction type "
            "(epsilon or v) of a Stable Diffusion UNet cannot be guessed"
        )
    diffusion, _ = core.diffusers_diffusion(folder)
    scheduler = read_json(path, "scheduler")
    diffusion["scheduler"] = {k: v for k, v in scheduler.items() if k != "_diffusers_version"}
    return diffusion, os.path.relpath(path, folder)


@register_component("UNet2DConditionModel", architecture="sd_unet")
def convert_sd_unet(folder: Path, out: Path, **options) -> dict:
    diffusion, scheduler = sd_diffusion(Path(folder))

    def to_params(sd, cfg, what):
        return state_dict_to_params(sd, "sd_unet", cfg, what)

    return convert_model_folder(
        Path(folder), out, architecture="sd_unet", to_params=to_params, diffusion=diffusion,
        extra_source={"scheduler_config": scheduler}, **options,
    )  # fmt: skip


def _first_stage(architecture: str):
    def convert(folder: Path, out: Path, **options) -> dict:
        def to_params(sd, cfg, what):
            return state_dict_to_params(sd, architecture, cfg, what)

        # a first stage has no noise schedule: its "diffusion" entry is empty
        return convert_model_folder(
            Path(folder), out, architecture=architecture, to_params=to_params, diffusion={},
            **options,
        )  # fmt: skip

    return convert


for _cls, _arch in FIRST_STAGE.items():
    register_component(_cls, architecture=_arch)(_first_stage(_arch))


@register_component("UNet2DModel", architecture="unet2d")
def convert_unet2d(folder: Path, out: Path, **options) -> dict:
    """A DDPM pipeline's UNet2DModel, through the converter's diffusers UNet2DModel path."""
    return core.convert(folder, out, **options)


register_component(*SCHEDULERS, kind="files")(copy_files(("scheduler_config.json",)))
