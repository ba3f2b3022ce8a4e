"""PSLD (Rout et al., "Solving Linear Inverse Problems Provably via Posterior Sampling with
Latent Diffusion Models", NeurIPS 2023) with the official settings (docs/methods.md).

    python -m scripts.reproduce --config=configs/psld.py:box \
        --config.model=SD_FOLDER --workdir=runs/psld_box

`model` must be a converted latent prior folder (`python -m convert_weights PIPELINE --out
DIR`; the demo prior is pixel-space and is refused by name). Sampler (LituRout/PSLD
stable-diffusion/scripts/inverse.py, ldm/models/diffusion/psld.py): CompVis DDIM on the uniform
grid ("ldmN"), `--ddim_steps` default 1000, `--ddim_eta` default 0.0, the empty prompt. Weights
(omega: measurement, gamma: gluing) per run script: Stable Diffusion (prior=sd, run/inverse.sh,
inverse_gb.sh, inverse_mb.sh, inverse_rip.sh: the inverse.py defaults omega 1, gamma 0.1;
run/inverse_bip.sh: omega 0.1, gamma 0.01 for box inpainting) on PSLD's *_psld.yaml tasks at
512 px (jaxdiff.tasks.latent_task); the FFHQ LDM (prior=ldm, run/inverse_*_ldm.sh: omega 0.1,
gamma 0.1; omega 0.9 for SR) on DPS's 256 px tasks. `factor=8` sets SR x8. Linear tasks only.
"""

from __future__ import annotations

from jaxdiff import config_lib, tasks

LINEAR_TASKS = ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "denoise")
LINEAR_TASKS += ("colorize",)
# (omega, gamma) per prior and task: the run scripts' --omega / --gamma (else the defaults)
WEIGHTS = {
    "sd": {"box": (0.1, 0.01)},  # run/inverse_bip.sh
    "ldm": {"sr4": (0.9, 0.1)},  # run/inverse_sr_ldm.sh
}
DEFAULT = {"sd": (1.0, 0.1), "ldm": (0.1, 0.1)}  # inverse.py defaults; run/inverse_*_ldm.sh


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg,
        __file__,
        task=config_lib.task_choice(),
        steps=1000,
        prior=config_lib.Choice("sd", ("sd", "ldm")),
        factor=4,
    )
    if a.task not in LINEAR_TASKS:
        raise ValueError(
            f"psld: task {a.task!r} has a nonlinear operator; PSLD's gluing needs the "
            f"transpose of a linear one ({', '.join(LINEAR_TASKS)})"
        )
    c = config_lib.base_config(a.task)
    if a.prior == "sd":
        c.task = tasks.latent_task(a.task, a.factor)
    elif c.task.operator == "super_resolution":
        c.task.operator_config.factor = a.factor
    c.method = "psld"
    c.sampler.respacing = f"ldm{a.steps}"  # inverse.py --ddim_steps default 1000, 'uniform'
    omega, gamma = WEIGHTS[a.prior].get(a.task, DEFAULT[a.prior])
    c.sampler.hparams.omega = omega
    c.sampler.hparams.gamma = gamma
    c.sampler.hparams.eta = 0.0  # inverse.py --ddim_eta default 0.0
    return c
