"""Score-ALD (Jalal et al. 2021) in DDPM form (docs/methods.md): an ancestral step, then a
likelihood step.

    x_{t-1} = x'_{t-1} - w_t * grad_{x_t} ||A(u(x_t)) - v_t y||^2

with x'_{t-1} the unconditional ancestral sample and, by option:
- gamma="ve" (default): u(x) = x / sqrt(abar_t), v_t = 1, gamma_t^2 = (1 - abar_t)/abar_t
  (NCSN units, Jalal et al.'s sigma_c); gamma="vp": u(x) = x, v_t = sqrt(abar_t),
  gamma_t^2 = 1 - abar_t;
- w_t = weight / (sigma^2 + gamma_t^2), halved with `half=True` (the exact tempered Gaussian
  log-likelihood gradient; the posters print both), times beta_t / sqrt(alpha_t) with
  `beta_step=True` (the step a Langevin-consistent reverse process would take; not in the
  posters). `weight` and `sigma` are traced hyperparameters.
The gradient is taken through A only (closed form 2 A^T(A u - v y) for linear A): no UNet
backprop, one network call per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    ancestral,
    as_forward,
    check_measurement,
    noise_sigma,
    p_mean_variance,
    resolve_hparams,
    resolve_image_shape,
)


@register_sampler(
    "score_ald",
    needs=("operator", "measurement"),
    hparams={"weight": 1.0, "sigma": None},
    ranges={"weight": "[0, 100]", "sigma": "[0, 2]"},
    grad=False,
)
def make_score_ald(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    gamma: str = "ve",
    half: bool = False,
    beta_step: bool = False,
    clip_denoised: bool = True,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"weight", "sigma"}, replay=None)`."""
    if gamma not in ("ve", "vp"):
        raise ValueError(f"score_ald: gamma must be 've' or 'vp', got {gamma!r}")
    forward = as_forward(operator)
    shape = resolve_image_shape(image_shape, operator, None, "score_ald")
    if defaults["sigma"] is None:
        defaults = {**defaults, "sigma": noise_sigma(noise)}
    steps = np.arange(schedule.num_steps)[::-1]

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "score_ald")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "score_ald")
        x_T, k_loop = initial_x(key, replay, shape, dtype, "score_ald")

        def step(x, k, z, state):
            pmv = p_mean_variance(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
            c = pmv["c"]
            abar = c["alphas_cumprod"]
            if gamma == "ve":
                gamma2 = (1 - abar) / abar

                def loss(x_in):
                    r = forward(op_params, x_in / jnp.sqrt(abar)) - y
                    return jnp.sum(r * r)
            else:
                gamma2 = 1 - abar

                def loss(x_in):
                    r = forward(op_params, x_in) - jnp.sqrt(abar) * y
                    return jnp.sum(r * r)

            w = h["weight"] / (h["sigma"] ** 2 + gamma2)
            if half:
                w = w / 2
            if beta_step:
                w = w * c["betas"] * c["sqrt_recip_alphas"]
            grad = jax.grad(loss)(x)
            x_new = ancestral(pmv, k, z) - w.astype(x.dtype) * grad
            return x_new, state, {"x0_hat": pmv["x0"]}

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="score_ald")

    return sample
