"""DDRM (Kawar, Elad, Ermon, Song, NeurIPS 2022) with the official code's settings, one preset per
task whose operator has an SVD form (docs/methods.md).

    python -m scripts.reproduce --config=configs/ddrm.py:sr4 --workdir=runs/ddrm_sr4

Sampler (bahjat-kawar/ddrm README commands and paper Sec. 5: `--timesteps 20 --eta 0.85
--etaB 1`): 20 steps on range(0, 1000, 50) (grid "ddrm20": runners/diffusion.py skip = 1000 //
timesteps), eta = 0.85, eta_b = 1.0, no clamp of x0. The measurement std `sigma` is the task's
(traced, so it follows a noise_sigma sweep); the official `--sigma_0 0.05` is on the [0, 1] scale
and the runner doubles it, i.e. 0.1 on [-1, 1] (the DPS tasks here use 0.05 on [-1, 1]).
The operators are the project's (op.svd, jaxdiff/operators/svd.py), which are what `apply`
computes; the official H_functions' defects (jaxdiff/operators/official_svd.py) and the sampler's
`official=True` are parity options only and are off here. Motion blur (no tractable SVD) and
phase retrieval (nonlinear) raise a clear error.
"""

from __future__ import annotations

from jaxdiff import config_lib

SVD_TASKS = ("box", "random", "gaussian_blur", "sr4", "sr2", "denoise", "colorize")


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in SVD_TASKS:
        raise ValueError(
            f"ddrm: task {c.task.name!r} has no operator in SVD form (DDRM works in the "
            f"operator's spectral basis); SVD tasks: {', '.join(SVD_TASKS)}"
        )
    c.method = "ddrm"
    c.sampler.respacing = "ddrm20"  # --timesteps 20: seq = range(0, 1000, 1000 // 20)
    c.sampler.options.official = False  # parity-only defects (docs/methods.md)
    c.sampler.hparams.eta = 0.85  # --eta 0.85 (etaA = etaC), paper Sec. 5
    c.sampler.hparams.eta_b = 1.0  # --etaB 1 (efficient_generalized_steps default etaB=1)
    return c
