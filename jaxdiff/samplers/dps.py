"""DPS, diffusion posterior sampling (Chung et al. 2023; the official code's update exactly,
docs/methods.md):

    x0_hat = clamp(x0(x_t, eps_theta(x_t)))          (clamp gradient inclusive, like torch)
    x'     = posterior_mean(x0_hat, x_t) + 1[k>0] exp(logvar/2) z
    norm   = ||y - A(x0_hat)||                        (un-squared; Poisson: * mean(1/|y|))
    x_{t-1} = x' - scale * d norm / d x_t             (through the UNet, w.r.t. the step's input)

Per-sample norm by default (image i's step does not depend on the other images). With
`batch_coupled_norm=True` the norm is the official whole-batch Frobenius norm, a `lax.psum` of
squared norms over the "batch" vmap axis of `batched(...)` (padding images carry valid=False and
drop out of the sum); the gradient is pulled back with the cotangent r_i / norm so the psum is not
differentiated (its transpose would multiply the step by the batch size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import common
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    ancestral,
    as_forward,
    check_measurement,
    noise_kind,
    posterior_step,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)


@register_sampler(
    "dps",
    needs=("operator", "measurement"),
    hparams={"scale": 1.0},
    ranges={"scale": "[0, 100]"},
    grad=True,
)
def make_dps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    likelihood: str | None = None,
    batch_coupled_norm: bool = False,
    clip_denoised: bool = True,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"scale"}, replay=None, valid=True)`.

    likelihood: "gaussian" (Algorithm 1) or "poisson" (the code's scalar mean(1/|y|) weight,
    Algorithm 2); default from the noise model's name, else gaussian. `remat=True` wraps the UNet
    in jax.checkpoint under the gradient (less memory, one more forward per step).
    replay: {"x_T": (H,W,C), "noise": (K,H,W,C)}; trajectory records x_pre_guidance, x0_hat, norm.
    """
    forward = as_forward(operator)
    if forward is None:
        raise ValueError("dps: needs an operator (the forward model A)")
    if likelihood is None:
        likelihood = "poisson" if noise_kind(noise) == "poisson" else "gaussian"
    if likelihood not in ("gaussian", "poisson"):
        raise ValueError(f"dps: likelihood must be 'gaussian' or 'poisson', got {likelihood!r}")
    shape = resolve_image_shape(image_shape, operator, None, "dps")
    steps = np.arange(schedule.num_steps)[::-1]

    def batch_sum(v, valid):
        return common.batch_sum(v, valid, "dps", "batch_coupled_norm") if batch_coupled_norm else v

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        h = resolve_hparams(defaults, hparams, "dps")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "dps")
        x_T, k_loop = initial_x(key, replay, shape, dtype, "dps")
        valid = jnp.asarray(valid, bool)
        if likelihood == "poisson":
            inv = 1.0 / jnp.abs(y)
            weight = batch_sum(jnp.sum(inv), valid) / batch_sum(jnp.asarray(inv.size, dtype), valid)
        else:
            weight = jnp.asarray(1.0, dtype)

        def step(x, k, z, state):
            def residual(x_in):
                pred = predict_x0(
                    model_fn, params, schedule, x_in, k, clip_denoised=clip_denoised, remat=remat
                )
                return y - forward(op_params, pred["x0"]), pred

            r, pullback, pred = jax.vjp(residual, x, has_aux=True)
            x0 = pred["x0"]
            x_prime = ancestral(posterior_step(schedule, pred, x), k, z)
            norm = jnp.sqrt(batch_sum(jnp.sum(r * r), valid))
            (grad,) = pullback(r * (weight / norm))
            x_new = x_prime - h["scale"].astype(dtype) * grad
            record = {"x_pre_guidance": x_prime, "x0_hat": x0, "norm": norm * weight}
            return x_new, state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="dps")

    return sample
