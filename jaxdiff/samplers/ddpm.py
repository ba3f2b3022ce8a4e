"""DDPM ancestral sampling (Ho et al. 2020; guided-diffusion's `p_sample_loop`): fixed small /
large or learned(-range) variance, over the whole (respaced) schedule."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    ancestral,
    p_mean_variance,
    resolve_hparams,
    resolve_image_shape,
)


@register_sampler("ddpm")
def make_ddpm(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    clip_denoised: bool = True,
    dtype=jnp.float32,
):
    """Unconditional ancestral sampling.

    `sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True)`;
    y / op_params are ignored. `replay={"x_T": (H,W,C), "noise": (K,H,W,C)}` feeds recorded
    draws (noise[i] is used in sampling step i; the last step's draw is multiplied by zero).
    """
    del noise
    shape = resolve_image_shape(image_shape, operator, None, "ddpm")
    steps = np.arange(schedule.num_steps)[::-1]

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del y, op_params, valid
        resolve_hparams(defaults, hparams, "ddpm")
        x_T, k_loop = initial_x(key, replay, shape, dtype, "ddpm")

        def step(x, k, z, state):
            pmv = p_mean_variance(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
            record = {"x0_hat": pmv["x0"], "eps": pmv["eps"], "log_variance": pmv["log_variance"]}
            return ancestral(pmv, k, z), state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="ddpm")

    return sample
