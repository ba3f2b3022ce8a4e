"""PiGDM (Song, Vahdat, Mardani, Kautz, ICLR 2023) with the official code's settings, one preset
per linear task (docs/methods.md).

    python -m scripts.reproduce --config=configs/pigdm.py:sr4 --workdir=runs/pigdm_sr4

Sampler (NVlabs/RED-diff sample_test.sh / sample_batch.sh, algos/pgdm.py, _configs/algo/pgdm.yaml):
100 DDIM steps on range(0, 1000, 10) (grid "pigdm100"; exp.num_steps=100 in the pgdm lines of
sample_test.sh), eta = 1.0 and grad_term_weight (`scale`) = 1.0 (sample_batch.sh ETA / GRAD_WEIGHT,
the pgdm lines of sample_test.sh), awd = True (_configs/algo/pgdm.yaml), no clamp, the chain started
from sqrt(abar_T) R y + sqrt(1 - abar_T) z (PGDM.initialize). Guidance form "noisy" (the paper's
sigma_y weighting R_t = (A^T A + sigma^2 / r_t^2 I)^-1 A^T; sigma = the task's noise std, passed
by the driver as the traced hparam `sigma`): the code's noiseless A^+ (form "pinv", no sigma_y
weighting) amplifies the measurement noise of ill-conditioned blurs. R uses the operator's SVD
form where it has one, conjugate gradients otherwise (motion blur).
The code's "in2" branch (hard replacement of the observed pixels, `project_observed=True`) and its
H_functions' quirks are parity options only (jaxdiff/parity/pigdm.py); they are off here.
Phase retrieval is nonlinear: PiGDM's pseudo-inverse guidance needs a linear A (clear error).
"""

from __future__ import annotations

from jaxdiff import config_lib

LINEAR_TASKS = (
    "box",
    "random",
    "gaussian_blur",
    "motion_blur",
    "sr4",
    "sr2",
    "denoise",
    "colorize",
)


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in LINEAR_TASKS:
        raise ValueError(
            f"pigdm: task {c.task.name!r} has a nonlinear operator; PiGDM's pseudo-inverse "
            f"guidance needs a linear one ({', '.join(LINEAR_TASKS)})"
        )
    c.method = "pigdm"
    c.sampler.respacing = "pigdm100"  # sample_test.sh pgdm: exp.num_steps=100 (start 1000, end 0)
    c.sampler.options.form = "noisy"  # the paper's noisy form; "pinv" is the code's exact one
    c.sampler.options.init = "pinv"  # PGDM.initialize: sqrt(abar_T) H^+ y + sqrt(1 - abar_T) z
    c.sampler.options.project_observed = False  # the "in2"-only hard replacement (parity option)
    c.sampler.options.clip_denoised = False  # the code never clamps x0_hat
    c.sampler.options.cg_maxiter = 200  # A^+ by CG where the operator has no SVD (motion blur)
    c.sampler.hparams.eta = 1.0  # sample_batch.sh ETA=1.0; sample_test.sh pgdm algo.eta=1.0
    c.sampler.hparams.scale = 1.0  # grad_term_weight: sample_batch.sh GRAD_WEIGHT=1.0, pgdm.yaml
    return c
