"""Tweedie one-step denoising (Efron 2011): x0_hat = E[x0 | x_t] from one network call.

The guide (the measurement brought to image shape) is read as x0 plus Gaussian noise of the
task's sigma; t* is the training step whose noise level matches it (sigma 0.05 -> t* = 11 for the
linear 1000-step schedule). For masks and blurs this is a heuristic, not a published method.
"""

from __future__ import annotations

from jaxdiff import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    c.method = "tweedie"
    c.sampler.respacing = ""  # one network call; the schedule only supplies alpha-bar
    c.sampler.options.clip_denoised = False  # the posterior mean, unclipped (sampler default)
    # hparams.sigma defaults to the task's measurement sigma (traced, follows noise_sigma sweeps)
    return c
