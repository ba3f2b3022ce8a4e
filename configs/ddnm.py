"""DDNM / DDNM+ (Wang et al. ICLR 2023) with the official code's settings, one preset per task.

    python -m scripts.reproduce --config=configs/ddnm.py:box --workdir=runs/ddnm_box

Sampler (wyhuai/DDNM, docs/methods.md): the SVD path (functions/svd_ddnm.py, not
--simplified); configs/celeba_hq.yml time_travel T_sampling 100 with travel_length 1 and
travel_repeat 1 (time travel off): DDNM's own grid "ddnm100" (jaxdiff/diffusion/time_grids.py:
get_schedule_jump, t = i * (1000 // N) for i = N-1 .. 0, exactly N steps for any N); eta 0.85
(main.py default and every README command). runners/diffusion.py runs DDNM when sigma_y == 0 and
DDNM+ otherwise: the task presets carry measurement noise (sigma 0.05 on [-1, 1]), so they run
`ddnm_plus` with hparams.sigma = the task's sigma (traced; the official runner doubles its CLI
sigma_y to the same [-1, 1] units). `sampler.options.official=True` reproduces the official noise
step (V^T skipped for SR / deblurring / colorization, wyhuai/DDNM issue #12); the default is the
correct form. Tasks whose operator has no SVD (motion_blur) or is nonlinear (phase_retrieval) are
refused here. The operators are the shared task presets (jaxdiff/tasks.py), not DDNM's own
degradations (4x4 average pooling, a 5-tap Gaussian with std 10).
"""

from __future__ import annotations

from jaxdiff import config_lib

ETA = 0.85  # main.py --eta default; every README / Table command uses 0.85 for the SVD path
RESPACING = "ddnm100"  # celeba_hq.yml T_sampling 100: get_schedule_jump, t = i * (1000 // 100)
NO_SVD = {
    "motion_blur": "a random motion kernel is not separable, so it has no tractable SVD",
    "phase_retrieval": "phase retrieval is nonlinear (DDNM needs a linear operator in SVD form)",
}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name in NO_SVD:
        raise ValueError(
            f"configs/ddnm.py: task {c.task.name!r} is not supported: {NO_SVD[c.task.name]}"
        )
    # runners/diffusion.py: ddnm_diffusion when sigma_y == 0, else ddnm_plus_diffusion
    c.method = "ddnm_plus" if c.task.sigma > 0 else "ddnm"
    c.sampler.respacing = RESPACING
    c.sampler.options.official = False  # True: the official noise step without V^T (parity)
    c.sampler.options.travel_length = 1  # celeba_hq.yml time_travel: off (repeat 1)
    c.sampler.options.travel_repeat = 1
    c.sampler.hparams.eta = ETA
    # ddnm_plus: hparams.sigma (the paper's sigma_y) defaults to the task's noise sigma (traced)
    return c
