"""DDRM: Denoising Diffusion Restoration Models (Kawar et al., NeurIPS 2022; official code
bahjat-kawar/ddrm functions/denoising.py `efficient_generalized_steps`; docs/methods.md).

The chain runs in the spectral basis of the operator H = U diag(s) V^T (`operator.svd`,
jaxdiff/operators/svd.py), in DDRM's variance-exploding units x_VE = x_t / sqrt(abar_t),
sigma_t = sqrt(1 - abar_t) / sqrt(abar_t). With ybar = U^T y (m,), sigma_y the noise std of y
and, at respaced step k, sigma' = sigma of the next (lower) step:

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);  v0 = V^T x0;  ve = V^T eps
    per spectral coordinate i (s_i = 0 beyond m, and where the SVD says so):
      unobserved (s_i = 0):  v_i = v0_i + sigma' sqrt(1 - eta^2) ve_i + sigma' eta z_i
      s_i sigma' < sigma_y:  v_i = v0_i + sigma' sqrt(1 - eta^2) (ybar_i - s_i v0_i) / sigma_y
                                   + sigma' eta z_i
      s_i sigma' > sigma_y:  v_i = eta_b ybar_i / s_i + (1 - eta_b) v0_i
                                   + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z_i
    x_next = sqrt(abar_next) V v
    x_T = sqrt(abar_T) V(x_VE) with x_VE_i = ybar_i / s_i + sqrt(sigma_T^2 - sigma_y^2 / s_i^2) z_i
          where s_i sigma_T > sigma_y, else sigma_T z_i.

hparams (traced): eta (the paper's eta = etaA = etaC, 0.85), eta_b (1.0), sigma = sigma_y
(default: the noise model's sigma, 0 without one). Three draws per step (z on the unobserved,
the "after" and the "before" coordinates; the sets are disjoint, so one (D,) normal feeds all
three unless a replay gives them separately, as the official code draws them).

`official=True` reproduces two defects of the official code (for parity only):
- a coordinate with s_i = 0 inside the first m counts as observed ("s_i sigma' < sigma_y"), so
  ybar_i / sigma_y is injected there (the official deblurring has 372 such singulars);
- x_T = V(x_VE) / sigma_T instead of sqrt(abar_T) V(x_VE) (a factor 1 / sqrt(1 - abar_T)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import gaussian
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    call_model,
    check_measurement,
    noise_sigma,
    resolve_hparams,
    resolve_image_shape,
)


@register_sampler(
    "ddrm",
    needs=("operator", "linear", "svd", "measurement"),
    hparams={"eta": 0.85, "eta_b": 1.0, "sigma": None},
    ranges={"eta": "[0, 1]", "eta_b": "[0, 1]", "sigma": "[0, 2]"},
)
def make_ddrm(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    official: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"eta", "eta_b", "sigma"}, replay=None)`.

    y in the operator's output layout (`operator.svd.y_shape`). replay: {"x_T_noise": (H,W,C)
    whose reshape(-1) is the spectral draw of x_T, "noise": {"full": (K,D), "after": (K,m),
    "before": (K,m)}}. The trajectory records x0_hat, eps, V_t_x0 and Vt_next (the spectral x
    before V and the sqrt(abar_next) scale).
    """
    svd = operator.svd
    shape = resolve_image_shape(image_shape, operator, None, "ddrm")
    if tuple(shape) != tuple(svd.image_shape):
        raise ValueError(
            f"ddrm: image_shape {shape} but the operator's SVD is for {svd.image_shape}"
        )
    if defaults.get("sigma") is None:
        sigma = noise_sigma(noise) if noise is not None else 0.0
        defaults = {**defaults, "sigma": sigma}
    D, m = svd.size, svd.rank
    steps = np.arange(schedule.num_steps)[::-1]
    k_first = int(steps[0])

    def draw(key, x):
        z = jax.random.normal(key, (D,), x.dtype)
        return {"full": z, "after": z[:m], "before": z[:m]}

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "ddrm")
        check_measurement(operator.apply, op_params, jnp.zeros(shape, dtype), y, "ddrm")
        eta, eta_b = h["eta"].astype(dtype), h["eta_b"].astype(dtype)
        sigma_y = h["sigma"].astype(dtype)
        s = svd.singulars(op_params).astype(dtype)
        nz = s > 0
        s_safe = jnp.where(nz, s, 1)
        ybar = svd.Ut(op_params, jnp.asarray(y, dtype))
        ybar_over_s = ybar / s_safe
        sigma_y_safe = jnp.where(sigma_y > 0, sigma_y, 1)
        z_T, k_loop = initial_x(key, replay, shape, dtype, "ddrm", name="x_T_noise")
        a_T = schedule.gather(k_first, dtype)["alphas_cumprod"]
        x_T = initial_state(svd, op_params, a_T, s, ybar, sigma_y, z_T, official)["x_T"]

        def step(x, k, z, state):
            c = schedule.gather(k, dtype)
            at, at_next = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            out = call_model(model_fn, params, x, c["timestep"])
            eps, _ = gaussian.split_model_output(out, x.shape[-1], schedule.variance_type)
            x0 = (x - eps * jnp.sqrt(1 - at)) / jnp.sqrt(at)  # no clamp (the official form)
            sn = jnp.sqrt(1 - at_next) / jnp.sqrt(at_next)
            std = sn * eta
            # the official sqrt(sn^2 - std^2), floored: at eta = 1 it is 0 there (exact torch
            # arithmetic), while XLA's fused float32 form can round it below 0 (NaN at step 0)
            tilde = jnp.sqrt(jnp.maximum(sn**2 - std**2, 0))
            v0 = svd.Vt(op_params, x0)
            ve = svd.Vt(op_params, eps)
            base = v0 + tilde * ve + std * z["full"]
            head0 = v0[:m]
            before = s * sn > sigma_y
            after = s * sn < sigma_y
            if not official:
                after = after & nz
            v_after = head0 + tilde * (ybar - s * head0) / sigma_y_safe + std * z["after"]
            diff_b = jnp.sqrt(jnp.maximum(sn**2 - (sigma_y / s_safe) ** 2 * eta_b**2, 0))
            v_before = ybar_over_s * eta_b + (1 - eta_b) * head0 + diff_b * z["before"]
            head = jnp.where(before, v_before, jnp.where(after, v_after, base[:m]))
            v_next = jnp.concatenate([head, base[m:]])
            x_next = jnp.sqrt(at_next) * svd.V(op_params, v_next)
            record = {
                "x0_hat": x0,
                "eps": eps,
                "V_t_x0": v0,
                "Vt_next": v_next,
                "before": before,
                "after": after,
            }
            return x_next.astype(dtype), state, record

        return chain(
            step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="ddrm", draw=draw
        )

    return sample


def initial_state(svd, op_params, a_T, s, ybar, sigma_y, z, official: bool = False) -> dict:
    """x_T ~ p(x_T | y) of the paper from the draw z (any shape of D entries; z.reshape(-1) is
    the spectral draw). Returns {"x_T", "init_y" (x_VE / sigma_T, the official init_y)}."""
    dtype = ybar.dtype
    s_T = jnp.sqrt(1 - a_T) / jnp.sqrt(a_T)
    large = (s > 0) & (s * s_T > sigma_y)
    s_safe = jnp.where(large, s, 1)
    inv = svd.pad(jnp.where(large, sigma_y / s_safe, 0))
    mean = svd.pad(jnp.where(large, ybar / s_safe, 0))
    remaining = jnp.sqrt(jnp.maximum(s_T**2 - inv**2, 0))
    init_y = (mean + remaining * z.reshape(-1).astype(dtype)) / s_T
    if official:
        x_T = svd.V(op_params, init_y)
    else:  # the VP chain's x_T = sqrt(abar_T) x_VE
        x_T = jnp.sqrt(a_T) * svd.V(op_params, init_y * s_T)
    return {"x_T": x_T.astype(dtype), "init_y": init_y}
