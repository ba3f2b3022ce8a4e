"""DPS, diffusion posterior sampling (REFERENCE 4.2, the official code's update exactly):

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

from jaxdiff.diffusion import gaussian
from jaxdiff.samplers.common import (
    SampleResult,
    ancestral,
    as_forward,
    call_model,
    check_measurement,
    clip_inclusive,
    noise_kind,
    resolve_hparams,
    resolve_image_shape,
)
from jaxdiff.samplers.loop import run_chain

BATCH_AXIS = "batch"


def make_dps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    image_shape=None,
    scale: float = 1.0,
    likelihood: str | None = None,
    batch_coupled_norm: bool = False,
    clip_denoised: bool = True,
    remat: bool = False,
    dtype=jnp.float32,
    keep_trajectory: bool = False,
    snapshot_every: int = 0,
    progress_every: int = 0,
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
    defaults = {"scale": float(scale)}
    steps = np.arange(schedule.num_steps)[::-1]
    variance_type = schedule.variance_type

    def batch_sum(v, valid):
        if not batch_coupled_norm:
            return v
        try:
            return jax.lax.psum(jnp.where(valid, v, jnp.zeros_like(v)), BATCH_AXIS)
        except NameError as err:
            raise ValueError(
                "dps: batch_coupled_norm=True needs the sampler wrapped in "
                "jaxdiff.samplers.batched(...) (it sums over the 'batch' vmap axis)"
            ) from err

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        h = resolve_hparams(defaults, hparams, "dps")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "dps")
        replay = replay or {}
        k_init, k_loop = jax.random.split(key)
        x_T = replay.get("x_T")
        x_T = jax.random.normal(k_init, shape, dtype) if x_T is None else jnp.asarray(x_T, dtype)
        valid = jnp.asarray(valid, bool)
        if likelihood == "poisson":
            inv = 1.0 / jnp.abs(y)
            weight = batch_sum(jnp.sum(inv), valid) / batch_sum(jnp.asarray(inv.size, dtype), valid)
        else:
            weight = jnp.asarray(1.0, dtype)

        def step(x, k, z, state):
            c = schedule.gather(k, dtype)

            def residual(x_in):
                out = call_model(model_fn, params, x_in, c["timestep"], remat=remat)
                eps, v = gaussian.split_model_output(out, shape[-1], variance_type)
                x0 = gaussian.x0_from_eps(c, x_in, eps)
                if clip_denoised:
                    x0 = clip_inclusive(x0)
                return y - forward(op_params, x0), (x0, v)

            r, pullback, (x0, v) = jax.vjp(residual, x, has_aux=True)
            pmv = {
                "mean": gaussian.posterior_mean(c, x0, x),
                "log_variance": gaussian.log_variance(variance_type, c, v),
            }
            x_prime = ancestral(pmv, k, z)
            norm = jnp.sqrt(batch_sum(jnp.sum(r * r), valid))
            (grad,) = pullback(r * (weight / norm))
            x_new = x_prime - h["scale"].astype(dtype) * grad
            record = {"x_pre_guidance": x_prime, "x0_hat": x0, "norm": norm * weight}
            return x_new, state, record

        out = run_chain(
            step,
            x_T,
            steps,
            key=k_loop,
            noise=replay.get("noise"),
            keep_trajectory=keep_trajectory,
            snapshot_every=snapshot_every,
            progress_every=progress_every,
            label="dps",
        )
        return SampleResult(out.x, out.diverged_at, out.snapshots, out.trajectory)

    return sample
