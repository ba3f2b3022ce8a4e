"""MCG, manifold constrained gradients (Chung et al., NeurIPS 2022), with the official settings.

    python -m scripts.reproduce --config=configs/mcg.py:box --workdir=runs/mcg_box

Sampler (HJ-harry/MCG_diffusion run_inpainting.sh and guided_diffusion/gaussian_diffusion.py
`p_sample_loop_progressive`, sample_method "MCG"): the ancestral DDPM chain over all 1000 steps
(--timestep_respacing 1000, --use_ddim False), x0 clamped (clip_denoised True, the script's
default), learned sigma, the un-squared norm ||y - A x0_hat|| whose gradient is subtracted with
weight 1 (`out["sample"] - norm_grad`: scale 1.0), then the projection onto the measurement.
DPS's repository runs the same step as its 'mcg' conditioning with a `scale` parameter (its
tables' MCG baseline). `sampler.options.official=True` reproduces DPS's repository's
projection and noise level (parity only; docs/methods.md); the default is the paper's
projection x - A^+(A x - y_s) with y_s noised at the step's output level.

Every linear task runs (A^+ through the SVD or CG). The projection is exact in measurement
space, so on deblurring it divides y's noise by the blur's small singular values (at 32 px with
the demo's 9x9 std-1 blur, noise of std 0.05 becomes std 30 under A^+; 2x super-resolution's
A^+ keeps it at 0.065): MCG suits inpainting (the paper's tasks: inpainting, colorization, CT)
and super-resolution, not deblurring.
Phase retrieval (nonlinear) is refused by name.
"""

from __future__ import annotations

from jaxdiff import config_lib

LINEAR_TASKS = ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "denoise",
                "colorize")  # fmt: skip


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in LINEAR_TASKS:
        raise ValueError(
            f"configs/mcg.py: task {c.task.name!r} has a nonlinear operator; MCG projects with "
            f"the pseudo-inverse of a linear one ({', '.join(LINEAR_TASKS)})"
        )
    c.method = "mcg"
    c.sampler.respacing = "1000"  # run_inpainting.sh --timestep_respacing 1000
    c.sampler.options.clip_denoised = True  # sample_inpainting.py clip_denoised=True
    c.sampler.options.official = False  # True: DPS's repository's projection (parity only)
    c.sampler.hparams.scale = 1.0  # gaussian_diffusion.py: out["sample"] - norm_grad
    return c
