"""DMPS: diffusion model based posterior sampling (Meng & Kabashima, 2022; official code
mengxiangming/dmps guided_diffusion/condition_methods.py `PosteriorSampling_meng` on
gaussian_diffusion.py `p_sample_loop`; docs/methods.md).

An ancestral DDPM step plus a closed-form likelihood score, with no gradient through the network.
Under an uninformative prior on x0, p(y | x_t) ~ N(y; A x_t / sqrt(abar), sigma^2 I +
(1 - abar) / abar A A^T), whose score through the SVD A = U diag(s) V^T (`operator.svd`) is

    g(x) = V pad(s / (s^2 (1 - abar) / abar + sigma^2) * U^T (y - A x / sqrt(abar))) / sqrt(abar)

and with alpha = 1 - beta of the (respaced) step, lambda = `scale`:

    x_{t-1} = mean(x_t) + exp(logvar / 2) z     (guided-diffusion's p_sample, x0 clipped)
    x_{t-1} += lambda (1 - alpha) / sqrt(alpha) g(x_t)

hparams (traced): scale (lambda, 1.75 in every official config), sigma (the noise std of y in
[-1, 1] units; default: the noise model's, 0 without one). One draw per step (the ancestral z).

`official=True` reproduces the official code for parity only:
- the score is evaluated at the ancestral sample x_{t-1} (the code passes `out['sample']` as
  x_t) with step t's abar, not at x_t as the derivation (and the default) has it;
- the gain is applied as Ht(U(Ut(r) / (s^2 c + sigma^2))) (the code's H^T of U(S_vector U^T r)),
  not V pad(s / (s^2 c + sigma^2) U^T r): the two agree only as far as the SVD's U is orthogonal,
  and a float32 SVD's U^T U differs from I by ~2e-4, which the large 1 / sigma^2 of the zeroed
  singulars carries into the score (3e-3 on a 9x9 deblurring); NaN where s = 0 and sigma = 0
  (zeroed deblurring singulars, inpainting holes); the default gives 0 there.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    ancestral,
    check_measurement,
    noise_sigma,
    p_mean_variance,
    resolve_hparams,
    resolve_image_shape,
)

CLIP = 1e-16  # the official np.clip of alpha and alpha-bar to [1e-16, 1 - 1e-16]


@register_sampler(
    "dmps",
    needs=("operator", "linear", "svd", "measurement"),
    hparams={"scale": 1.75, "sigma": None},
    # scale 0 is the unguided prior; sigma is the measurement noise on the [-1, 1] scale, as
    # for the other methods that take it
    ranges={"scale": "[0, 100]", "sigma": "[0, 2]"},
)
def make_dmps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    clip_denoised: bool = True,
    official: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"scale", "sigma"}, replay=None)`.

    y in the operator's output layout (`operator.svd.y_shape`). replay: {"x_T": (H,W,C),
    "noise": (K,H,W,C)} (the last step's draw is multiplied by zero). The trajectory records
    x0_hat, eps, mean, log_variance, x_prev (the ancestral sample) and score (g above, at the
    point it is taken).
    """
    svd = operator.svd
    shape = resolve_image_shape(image_shape, operator, None, "dmps")
    if tuple(shape) != tuple(svd.image_shape):
        raise ValueError(
            f"dmps: image_shape {shape} but the operator's SVD is for {svd.image_shape}"
        )
    if defaults.get("sigma") is None:
        sigma = noise_sigma(noise) if noise is not None else 0.0
        defaults = {**defaults, "sigma": 0.0 if sigma is None else sigma}
    steps = np.arange(schedule.num_steps)[::-1]
    tables = schedule.tables
    abar_np = np.clip(tables["alphas_cumprod"], CLIP, 1 - CLIP)
    alpha_np = np.clip(1.0 - tables["betas"], CLIP, 1 - CLIP)
    step_np = (1 - alpha_np) / np.sqrt(alpha_np)

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "dmps")
        check_measurement(operator.apply, op_params, jnp.zeros(shape, dtype), y, "dmps")
        scale, sigma = h["scale"].astype(dtype), h["sigma"].astype(dtype)
        s = svd.singulars(op_params).astype(dtype)
        y = jnp.asarray(y, dtype)
        abar_t = jnp.asarray(abar_np, dtype)
        step_t = jnp.asarray(step_np, dtype)
        x_T, k_loop = initial_x(key, replay, shape, dtype, "dmps")

        def score(x, abar):
            """The closed-form likelihood score g(x) at alpha-bar `abar`."""
            r = svd.Ut(op_params, y - svd.H(op_params, x) / jnp.sqrt(abar))
            denom = s * s * ((1 - abar) / abar) + sigma**2
            if official:  # Ht(U(r / denom)): U^T U = I only to the SVD's float32 rounding
                return svd.Ht(op_params, svd.U(op_params, (1 / denom) * r)) / jnp.sqrt(abar)
            gain = jnp.where(s > 0, s / jnp.where(s > 0, denom, 1), 0)
            return svd.V(op_params, svd.pad(gain * r)) / jnp.sqrt(abar)

        def step(x, k, z, state):
            pmv = p_mean_variance(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
            x_prev = ancestral(pmv, k, z)
            g = score(x_prev if official else x, abar_t[k])
            x_next = x_prev + scale * g * step_t[k]
            record = {
                "x0_hat": pmv["x0"],
                "eps": pmv["eps"],
                "mean": pmv["mean"],
                "log_variance": pmv["log_variance"],
                "x_prev": x_prev,
                "score": g,
            }
            return x_next.astype(dtype), state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="dmps")

    return sample
