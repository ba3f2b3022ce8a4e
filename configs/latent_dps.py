"""Latent DPS (DPS through the decoder of a latent prior; the baseline of PSLD, Rout et al.,
NeurIPS 2023) with PSLD's official settings for gamma = 0 (docs/methods.md).

    python -m scripts.reproduce --config=configs/latent_dps.py:sr4 \
        --config.model=SD_FOLDER --workdir=runs/latent_dps_sr4

`model` must be a converted latent prior folder (`python -m convert_weights PIPELINE --out
DIR`; the demo prior is pixel-space and is refused by name). Sampler (LituRout/PSLD
stable-diffusion/scripts/inverse.py and ldm/models/diffusion/psld.py): CompVis DDIM on the
uniform grid ("ldmN": range(0, 1000, 1000 // N) + 1), `--ddim_steps` default 1000, `--ddim_eta`
default 0.0, the measurement weight `--omega` default 1 (Stable Diffusion; the LDM scripts
run/inverse_*_ldm.sh use 0.1, 0.9 for SR), the unconditional (empty-prompt) context. Tasks:
PSLD's *_psld.yaml at 512 px (jaxdiff.tasks.latent_task), `factor=8` for SR x8.
"""

from __future__ import annotations

from jaxdiff import config_lib, tasks

# run/inverse_*_ldm.sh (FFHQ LDM, VQ f4): --omega 1e-1, 9e-1 for super-resolution
LDM_OMEGA = {"sr4": 0.9}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg,
        __file__,
        task=config_lib.task_choice(),
        steps=1000,
        prior=config_lib.Choice("sd", ("sd", "ldm")),
        factor=4,
    )
    c = config_lib.base_config(a.task)
    if a.prior == "sd":
        c.task = tasks.latent_task(a.task, a.factor)
    elif c.task.operator == "super_resolution":
        c.task.operator_config.factor = a.factor
    c.method = "latent_dps"
    c.sampler.respacing = f"ldm{a.steps}"  # inverse.py --ddim_steps default 1000, 'uniform'
    c.sampler.hparams.eta = 0.0  # inverse.py --ddim_eta default 0.0
    # inverse.py --omega default 1 (SD); run/inverse_*_ldm.sh --omega 0.1 (0.9 for SR)
    c.sampler.hparams.scale = 1.0 if a.prior == "sd" else LDM_OMEGA.get(a.task, 0.1)
    return c
