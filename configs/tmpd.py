"""TMPD (Boys et al., TMLR 2024) with the settings of the authors' code, bb515/tmpdjax
(docs/methods.md).

    python -m scripts.reproduce --config=configs/tmpd.py:sr4 --workdir=runs/tmpd_sr4

run_lib.py runs the image tasks with the "plus" solvers (KPDDPMplus: the covariance's diagonal
taken as its row sums, one Jacobian product per step: covariance "rowsum"; `covariance=diag`
is KPDDPMdiag, one product per measurement entry, `covariance=full` KPDDPM's full matrix, here
solved by CG) in DDPM ancestral steps (the KPDDPM Markov chain: eta 1) over 1000 steps
(configs/default_cs_configs.py solver.num_outer_steps = 1000), no clamp of the denoiser's mean
(diffusionjax get_estimate_x_0_vmap, clip False). The measurement noise sigma is the task's.
Linear operators only (phase retrieval is refused by name).
"""

from __future__ import annotations

from jaxdiff import config_lib

FORMS = ("rowsum", "diag", "full")
LINEAR_TASKS = ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "denoise",
                "colorize")  # fmt: skip


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg, __file__, task=config_lib.task_choice(), steps=1000,
        covariance=config_lib.Choice("rowsum", FORMS), iterations=20,
    )  # fmt: skip
    c = config_lib.base_config(a.task)
    if c.task.name not in LINEAR_TASKS:
        raise ValueError(
            f"tmpd: task {c.task.name!r} has a nonlinear operator; TMPD projects with a linear "
            f"one ({', '.join(LINEAR_TASKS)})"
        )
    c.method = "tmpd"
    c.sampler.respacing = str(a.steps)  # default_cs_configs.py num_outer_steps = 1000
    c.sampler.hparams.eta = 1.0  # KPDDPM: the DDPM ancestral step
    c.sampler.options.covariance = a.covariance  # run_lib.py: the "plus" solvers for images
    if a.covariance == "full":
        c.sampler.options.solver = "cg"
        c.sampler.options.iterations = a.iterations
    c.sampler.options.clip_denoised = False  # get_estimate_x_0_vmap(clip=False)
    return c
