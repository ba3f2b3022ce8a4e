"""FPS-SMC (Dou & Song, ICLR 2024) with the official code's settings, one preset per task whose
operator has an SVD form (docs/methods.md).

    python -m scripts.reproduce --config=configs/fps_smc.py:box --workdir=runs/fps_smc_box

Sampler (ZehaoDou-official/FPS-SMC-2023 configs/diffusion_config.yaml: 1000 steps, no
respacing, learned-range variance, clip_denoised True; scripts/run_sampling.sh and
sample_condition.py defaults: c_rate 0.95, particle_size 5): resampling by random.choices
(multinomial) at every step and the code's reconstruction, particle 0 after the last
resampling, i.e. one uniformly drawn particle (`estimator="draw"`; "mean" is the weighted mean).
The code fixes the assumed noise std at 0.05 (self.sigma); here `sigma` is the task's (traced).
The stable form of the guided mean is used (the code's float32-cancelling form and its weights
raised to the power M are `official=True`, parity only). Each image costs 999 x 5 network
evaluations. Motion blur (the code substitutes a separable Gaussian for it) and phase retrieval
have no SVD form here and raise a clear error.
"""

from __future__ import annotations

from jaxdiff import config_lib

SVD_TASKS = ("box", "random", "gaussian_blur", "sr4", "sr2", "denoise", "colorize")


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in SVD_TASKS:
        raise ValueError(
            f"fps_smc: task {c.task.name!r} has no operator in SVD form (FPS-SMC's proposal is "
            f"the Gaussian product in the operator's spectral basis); SVD tasks: "
            f"{', '.join(SVD_TASKS)}"
        )
    c.method = "fps_smc"
    c.sampler.respacing = "1000"  # diffusion_config.yaml timestep_respacing 1000
    c.sampler.options.clip_denoised = True  # diffusion_config.yaml clip_denoised
    c.sampler.options.num_particles = 5  # sample_condition.py --particle_size default
    c.sampler.options.resampling = "multinomial"  # gaussian_diffusion.py random.choices
    c.sampler.options.estimator = "draw"  # p_sample_loop returns img[0] after resampling
    c.sampler.options.official = False  # parity-only forms (docs/methods.md)
    c.sampler.hparams.c_rate = 0.95  # sample_condition.py --c_rate default
    return c
