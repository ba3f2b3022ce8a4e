"""Unconditional DDIM (Song, Meng, Ermon, ICLR 2021): the prior alone, the measurement unused.

Like configs/ddpm.py it is the "no information" reference of the table, at a fraction of the
cost. Settings of the DDIM paper's code (ermongroup/ddim runners/diffusion.py, skip_type
"uniform": seq = range(0, T, T // timesteps); functions/denoising.py generalized_steps): 50 steps,
eta = 0 (the deterministic sampler of the paper's Table 1 columns), no clamp of x0_hat.
"""

from __future__ import annotations

from jaxdiff import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    c.method = "ddim"
    c.sampler.respacing = "skip50"  # range(0, 1000, 20): the official uniform skip, 50 steps
    c.sampler.options.clip_denoised = False  # generalized_steps does not clamp x0_t
    c.sampler.hparams.eta = 0.0  # DDIM paper: eta = 0 is "DDIM" (Table 1)
    return c
