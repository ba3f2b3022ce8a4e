"""Score-ALD (Jalal et al.) in the DDPM form of the course posters (docs/methods.md).

    x_{t-1} = x'_{t-1} - w_t grad_{x_t} ||A(x_t / sqrt(abar_t)) - y||^2,
    w_t = weight / (sigma^2 + gamma_t^2) * beta_t / sqrt(alpha_t)

gamma_t^2 = (1 - abar_t) / abar_t (NCSN units, Jalal et al.'s sigma_c; gamma="ve"), sigma the
task's measurement noise. There is no official DDPM-form step size: the posters' formula has no
beta_t factor and with sigma = 0.05 its weight reaches 1/sigma^2 = 400, which diverges
(docs/methods.md); the beta_t/sqrt(alpha_t) factor makes it the Langevin-consistent step of the reverse process.
`weight` is a traced, sweepable multiplier (python -m scripts.sweep ... --sweep=weight:...).
"""

from __future__ import annotations

from jaxdiff import config_lib

WEIGHT = 1.0  # the Langevin-consistent step itself (beta_step); see configs/demo.py for tuning


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    c.method = "score_ald"
    c.sampler.respacing = "1000"
    c.sampler.options.gamma = "ve"
    c.sampler.options.half = False
    c.sampler.options.beta_step = True
    c.sampler.options.clip_denoised = True
    c.sampler.hparams.weight = WEIGHT
    # hparams.sigma defaults to the task's measurement sigma (traced)
    return c
