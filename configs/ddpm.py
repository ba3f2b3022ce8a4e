"""Unconditional DDPM ancestral sampling (Ho et al. 2020): the prior alone, the measurement unused.

Its metrics against the ground truth are the "no information" reference for the table. Settings:
guided-diffusion's image_sample.py defaults (all 1000 steps, clip_denoised True).
"""

from __future__ import annotations

from jaxdiff import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    c.method = "ddpm"
    c.sampler.respacing = "1000"
    c.sampler.options.clip_denoised = True
    return c
