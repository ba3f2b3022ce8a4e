"""Diffusion core: schedules, respacing and Gaussian-diffusion algebra (numbers only)."""

from jaxdiff.diffusion.gaussian import (
    ddim_coefficients,
    ddim_step,
    eps_from_score,
    eps_from_x0,
    eps_mean,
    log_variance,
    posterior_mean,
    posterior_tables,
    q_sample,
    score_from_eps,
    split_model_output,
    t_for_sigma,
    x0_from_eps,
)
from jaxdiff.diffusion.schedule import (
    Schedule,
    alphas_cumprod_from_betas,
    get_betas,
    make_schedule,
    respace,
    schedule_from_meta,
    space_timesteps,
)

__all__ = [
    "Schedule",
    "alphas_cumprod_from_betas",
    "ddim_coefficients",
    "ddim_step",
    "eps_from_score",
    "eps_from_x0",
    "eps_mean",
    "get_betas",
    "log_variance",
    "make_schedule",
    "posterior_mean",
    "posterior_tables",
    "q_sample",
    "respace",
    "schedule_from_meta",
    "score_from_eps",
    "space_timesteps",
    "split_model_output",
    "t_for_sigma",
    "x0_from_eps",
]
