"""MPGD, manifold-preserving guided diffusion (He et al., ICLR 2024; official code
KellyYutongHe/mpgd_pytorch, linear_inv/guided_diffusion `condition_methods.py` `mpgd_wo_proj` on
`guided_gaussian_diffusion.py` `x0ddim`; docs/methods.md), the pixel-space variant without a
projection onto the manifold:

    x0_hat = clamp(x0(x_t, eps_theta(x_t)))           (no gradient through the network)
    eps    = eps(x_t, x0_hat)                         (consistent with the clamp)
    g      = d ||y - A x0_hat|| / d x0_hat = -A^T r / ||r||,  r = y - A x0_hat   (un-squared)
    x0'    = x0_hat - scale * g / sqrt(abar_prev)
    x_prev = sqrt(abar_prev) x0' + sqrt(1 - abar_prev - s^2) eps + 1[k>0] s z
    s      = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)

The guidance step is divided by sqrt of the NEXT step's alpha-bar (the code passes
`at=alpha_bar_prev`), 1 at the last step. hparams (traced): eta (0.5 in the official runs),
scale (17.5 / 7.5 / 4 at 20 / 50 / 100 steps). One draw per step (the DDIM noise z; the code
draws it at the last step too and does not add it).

The norm is per image. The code's is the Frobenius norm of its whole batch, but its loop runs
one image only (`if t != 0` on the (B,) time tensor raises for B > 1; the official script's
loader is batch 1), so per image is the official behaviour. Gaussian likelihood only: the
code's Poisson branch (norm / |y|) is refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.gaussian import eps_from_x0
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    check_measurement,
    noise_kind,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)


@register_sampler(
    "mpgd",
    needs=("operator", "linear", "measurement"),
    hparams={"eta": 0.5, "scale": 7.5},
    # eta interpolates DDIM (0) and DDPM (1); scale 0 is unguided DDIM with the x0 clamp
    ranges={"eta": "[0, 1]", "scale": "[0, 1000]"},
)
def make_mpgd(
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
    """`sample(params, key, y, op_params, hparams={"eta", "scale"}, replay=None, valid=True)`.

    replay: {"x_T": (H,W,C), "noise": (K,H,W,C)}. The trajectory records x0_hat (before the
    guidance), x0_guided, eps and norm (||r||).
    """
    if noise_kind(noise) == "poisson":
        raise ValueError(
            "mpgd: the Poisson likelihood is not supported (the Gaussian norm ||y - A x0|| only)"
        )
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "mpgd")
    steps = np.arange(schedule.num_steps)[::-1]

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # nothing couples the images
        h = resolve_hparams(defaults, hparams, "mpgd")
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "mpgd")
        eta, scale = h["eta"].astype(dtype), h["scale"].astype(dtype)
        y = jnp.asarray(y, dtype)
        x_T, k_loop = initial_x(key, replay, shape, dtype, "mpgd")

        def step(x, k, z, state):
            pred = predict_x0(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
            c, x0 = pred["c"], pred["x0"]
            eps = eps_from_x0(c, x, x0)
            a_t, a_prev = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            s = eta * jnp.sqrt((1 - a_prev) / (1 - a_t)) * jnp.sqrt(1 - a_t / a_prev)
            r, pullback = jax.vjp(lambda v: y - forward(op_params, v), x0)
            norm = jnp.sqrt(jnp.sum(r * r))
            # d||r||/dx0 = -A^T r / ||r|| (0 where r = 0, where the norm has no gradient)
            (g,) = pullback(r / jnp.where(norm > 0, norm, 1))
            x0_guided = x0 - g * scale / jnp.sqrt(a_prev)
            mean = x0_guided * jnp.sqrt(a_prev) + jnp.sqrt(jnp.maximum(1 - a_prev - s**2, 0)) * eps
            x_next = mean + jnp.where(k > 0, s * z, jnp.zeros_like(z))
            record = {"x0_hat": x0, "x0_guided": x0_guided, "eps": eps, "norm": norm}
            return x_next.astype(dtype), state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="mpgd")

    return sample
