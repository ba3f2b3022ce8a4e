"""MCG-diff (Cardoso et al., ICLR 2024) with the official code's settings, one preset per task
whose operator has an SVD form (docs/methods.md).

    python -m scripts.reproduce --config=configs/mcg_diff.py:sr4 --workdir=runs/mcg_diff_sr4

Sampler (gabrielvc/mcg_diff scripts/configs: diffusion/ddim_100.yaml n_steps 100, eta 1;
mcg_diff/default.yaml N_particles 64, gaussian_var 1e-4): the grid linspace(0, 999, 100).long()
(respacing "mcgdiff100", hugging_faces_models.py), 64 particles resampled by Categorical
(multinomial) at every filtering step, and the official reconstruction: one particle drawn by
the final weights (`estimator="draw"`; "mean" is the weighted mean). The measurement std `sigma`
is the task's (traced). Each image costs 99 x 64 network evaluations. Motion blur (no tractable
SVD) and phase retrieval (nonlinear) raise a clear error.
"""

from __future__ import annotations

from jaxdiff import config_lib

SVD_TASKS = ("box", "random", "gaussian_blur", "sr4", "sr2", "denoise", "colorize")


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in SVD_TASKS:
        raise ValueError(
            f"mcg_diff: task {c.task.name!r} has no operator in SVD form (MCG-diff works in the "
            f"operator's spectral basis); SVD tasks: {', '.join(SVD_TASKS)}"
        )
    c.method = "mcg_diff"
    c.sampler.respacing = "mcgdiff100"  # diffusion/ddim_100.yaml n_steps 100
    c.sampler.options.num_particles = 64  # mcg_diff/default.yaml N_particles
    c.sampler.options.resampling = "multinomial"  # particle_filter.py Categorical(...).sample
    c.sampler.options.estimator = "draw"  # run_mcg_diff: Categorical(logits=weights), one particle
    c.sampler.hparams.eta = 1.0  # diffusion/ddim_100.yaml eta
    c.sampler.hparams.kappa = 1e-4  # mcg_diff/default.yaml gaussian_var
    return c
