"""DDIM, denoising diffusion implicit models (Song, Meng, Ermon, ICLR 2021; docs/methods.md):

    x0_hat = x0(x_t, eps_theta(x_t))                     (optionally clipped to [-1, 1])
    x_next = sqrt(abar_next) x0_hat + c1 z + c2 eps_theta   (jaxdiff.diffusion.ddim_step)
    c1 = eta sqrt((1 - abar_t/abar_next)(1 - abar_next)/(1 - abar_t))
    c2 = sqrt(1 - abar_next - c1^2)

over the (respaced) schedule: `respacing="skipN"` is the official codes' range(0, T, T // N),
"ddimN" the smallest stride giving exactly N steps. eta is a traced hyperparameter, default 0:
the deterministic sampler the paper is named for (the probability-flow ODE's discretisation, the
setting of its fast-sampling tables); eta = 1 is DDPM's fixed_small ancestral chain.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.gaussian import ddim_step, eps_from_x0
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import predict_x0, resolve_hparams, resolve_image_shape


@register_sampler("ddim", hparams={"eta": 0.0}, ranges={"eta": "[0, 1]"})
def make_ddim(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    clip_denoised: bool = False,
    dtype=jnp.float32,
):
    """Unconditional DDIM sampling.

    `sample(params, key, y=None, op_params=None, hparams={"eta"}, replay=None, valid=True)`;
    y / op_params are ignored. clip_denoised: clamp x0_hat to [-1, 1] (the DDIM paper's code does
    not; guided-diffusion's ddim_sample does). replay: {"x_T": (H,W,C), "noise": (K,H,W,C)};
    trajectory records x0_hat, eps and the model timestep.
    """
    del noise
    shape = resolve_image_shape(image_shape, operator, None, "ddim")
    steps = np.arange(schedule.num_steps)[::-1]

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del y, op_params, valid
        h = resolve_hparams(defaults, hparams, "ddim")
        eta = h["eta"].astype(dtype)
        x_T, k_loop = initial_x(key, replay, shape, dtype, "ddim")

        def step(x, k, z, state):
            pred = predict_x0(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
            c, eps = pred["c"], pred["eps"]
            if clip_denoised:  # guided-diffusion's ddim_sample: eps consistent with the clamp
                eps = eps_from_x0(c, x, pred["x0"])
            a_t, a_next = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            x_next = ddim_step(pred["x0"], eps, a_t, a_next, eta, z)
            record = {"x0_hat": pred["x0"], "eps": eps, "timestep": c["timestep"]}
            return x_next, state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="ddim")

    return sample
