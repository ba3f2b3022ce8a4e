"""CompVis latent-diffusion checkpoints (`.ckpt`: LDM's celebahq / ffhq / lsun models) -> a
converted latent pipeline folder: the UNet, the VQ first stage and the schedule.

The file holds `model.diffusion_model.*`, an openaimodel `UNetModel` (guided-diffusion's key
names, so the "adm" converter takes it), `first_stage_model.*`, a taming `VQModel` (mapped to
diffusers' VQModel keys as in the Stable Diffusion single files), and the `betas` the model was
trained with, which become the scheduler config (trained_betas; LDM's DDIM: "leading" steps
with offset 1 and alpha-bar[0] after the last step). What the weights cannot show comes with the
call: the UNet's head count and attention order (`unet_config`: a JSON of `UNetModel` kwargs or
create_model flags, as for ADM checkpoints) and the VQ's `config.json` (`vq_config`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from jaxdiff.convert import sd_single_file
from jaxdiff.errors import CheckpointError

FIRST_STAGE = "first_stage_model."


def split(state_dict: dict, what: str) -> tuple[dict, dict, np.ndarray]:
    """(UNet state dict, first stage state dict in the original layout, betas)."""
    unet, first, unknown = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(sd_single_file.UNET_PREFIX):
            unet[key[len(sd_single_file.UNET_PREFIX) :]] = value
        elif key.startswith(FIRST_STAGE):
            first[key[len(FIRST_STAGE) :]] = value
        elif not sd_single_file.IGNORED.match(key):
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{what}: keys of no component: {unknown[:8]}")
    if not unet or not first:
        raise CheckpointError(
            f"{what}: needs both {sd_single_file.UNET_PREFIX}* and {FIRST_STAGE}* keys "
            "(a latent-diffusion checkpoint)"
        )
    if "betas" not in state_dict:
        raise CheckpointError(
            f"{what}: no 'betas' buffer (the schedule the model was trained with)"
        )
    return unet, first, np.asarray(state_dict["betas"], dtype=np.float64)


def scheduler_config(betas: np.ndarray) -> dict:
    """LDM's DDIM (ddim_discretize "uniform": range(0, T, T // N) + 1) as a diffusers config."""
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": int(betas.size),
        "trained_betas": [float(b) for b in betas],
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def convert_ldm_file(
    path, out, *, unet_config, vq_config, force: bool = False, progress: bool = False, **options
) -> dict:
    """An LDM `.ckpt` -> OUT/unet (adm), OUT/vqvae (vq_model), OUT/scheduler and
    OUT/pipeline.json; written beside OUT first and moved into place at the end."""
    from jaxdiff.checkpoint import MAX_ABS_WEIGHT, check_replaceable, read_meta, save_pretrained
    from jaxdiff.convert import adm
    from jaxdiff.convert.core import CONVERTER_VERSION, adm_model_config, convert, sha256
    from jaxdiff.convert.pipeline import REPLACEABLE

    path, out = Path(path), Path(out).absolute()
    check_replaceable(out, force, REPLACEABLE)  # before the (possibly long) read
    vq_cfg = json.loads(Path(vq_config).read_text())
    if vq_cfg.get("_class_name", "VQModel") != "VQModel":
        raise CheckpointError(f"{vq_config}: a {vq_cfg['_class_name']} config, not a VQModel's")
    unet_sd, first, betas = split(sd_single_file.read_state_dict(path, progress), str(path))
    vq_sd = sd_single_file.vae_to_diffusers(first, vq_cfg, f"{path}: first stage")
    unet_sd = {k: np.asarray(v, dtype=np.float32) for k, v in unet_sd.items()}
    model_config, _ = adm_model_config(unet_sd, None, Path(unet_config))
    params = adm.state_dict_to_params(unet_sd, model_config, what=f"{path}: UNet")
    source = {"file": path.name, "sha256": sha256(path, progress), "format": "ldm-ckpt"}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        diffusion = {
            "num_timesteps": int(betas.size),
            "trained_betas": [float(b) for b in betas],
            "variance_type": "fixed_small",
            "schedule_dtype": "float64",
            "prediction_type": "epsilon",
        }
        meta = {
            "architecture": "adm",
            "model_config": model_config,
            "diffusion": diffusion,
            "source": source,
            "converter_version": CONVERTER_VERSION,
        }
        max_abs = None if options.get("allow_large_weights") else MAX_ABS_WEIGHT
        save_pretrained(tmp / "unet", params, meta, max_abs=max_abs)
        with tempfile.TemporaryDirectory(prefix="jaxdiff-ldm-") as folder:
            from safetensors.numpy import save_file

            folder = Path(folder)
            (folder / "config.json").write_text(json.dumps(vq_cfg))
            arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in vq_sd.items()}
            save_file(arrays, str(folder / "diffusion_pytorch_model.safetensors"))
            convert(folder, tmp / "vqvae", progress=progress, **options)
        (tmp / "scheduler").mkdir()
        sched = json.dumps(scheduler_config(betas), indent=1) + "\n"
        (tmp / "scheduler" / "scheduler_config.json").write_text(sched)
        index = {
            "format_version": 1,
            "pipeline": "LDMPipeline",
            "components": {
                "unet": {"class": "UNetModel", "kind": "model", "path": "unet",
                         "architecture": "adm"},
                "vqvae": {"class": "VQModel", "kind": "model", "path": "vqvae",
                          "architecture": read_meta(tmp / "vqvae")["architecture"]},
                "scheduler": {"class": "DDIMScheduler", "kind": "files", "path": "scheduler"},
            },
            "source": source,
            "converter_version": CONVERTER_VERSION,
        }  # fmt: skip
        (tmp / "pipeline.json").write_text(json.dumps(index, indent=2) + "\n")
        if out.exists():
            check_replaceable(out, True, REPLACEABLE)  # it may have appeared meanwhile
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index
