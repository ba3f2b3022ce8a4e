"""Tweedie one-step denoising (Efron 2011): x0_hat = E[x0 | x_t] from one model call.

The measurement-derived guide g (y itself for denoising) is read as a noisy x0 with std sigma,
i.e. x_t = sqrt(abar_t*) g at the training index t* whose VE noise level sqrt((1-abar)/abar) is
closest to sigma. For blur or masks this is only a heuristic (not a source method).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.diffusion import gaussian
from jaxdiff.samplers.base import register_sampler
from jaxdiff.samplers.common import (
    SampleResult,
    call_model,
    clip_inclusive,
    make_guide,
    noise_sigma,
    resolve_image_shape,
)


@register_sampler(
    "tweedie",
    needs=("guide", "measurement"),
    hparams={"sigma": None, "t": None},
    # -1: not given (sigma from the noise model; t from sigma)
    ranges={"sigma": "-1 | [0, 2]", "t": "-1 | [0, inf)"},
    nfe=lambda num_steps, options: 1,
)
def make_tweedie(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    guide=None,
    clip_denoised: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params=None, hparams=None, ...)`; the key is unused.

    hparams (traced): "sigma" (noise std on y's scale; default `sigma`, else the noise model's)
    and "t" (a training index that overrides sigma when >= 0). The output is unclipped by
    default: it is the posterior mean, and clipping would bias it. There is no loop, so
    snapshots/progress do not apply; `keep_trajectory` records the t* used.
    """
    shape = resolve_image_shape(image_shape, operator, None, "tweedie")
    guide_fn = make_guide(guide, shape, "tweedie")
    sigma = defaults["sigma"] if defaults["sigma"] is not None else noise_sigma(noise)
    t = defaults["t"]
    defaults = {"sigma": -1.0 if sigma is None else float(sigma), "t": -1 if t is None else int(t)}
    train_abar = schedule.train_alphas_cumprod
    variance_type = schedule.variance_type

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del key, replay, valid
        hparams = dict(hparams or {})
        unknown = sorted(set(hparams) - set(defaults))
        if unknown:
            raise ValueError(f"tweedie: unknown hyperparameter(s) {unknown}; known: sigma, t")
        if "sigma" not in hparams and "t" not in hparams and max(defaults.values()) < 0:
            raise ValueError("tweedie: give sigma or t (the noise model exposes no sigma)")
        h = {**defaults, **hparams}
        g = jnp.asarray(guide_fn(op_params, y), dtype)
        t_req = jnp.asarray(h["t"], jnp.int32)
        t_star = jnp.where(t_req >= 0, t_req, gaussian.t_for_sigma(train_abar, h["sigma"]))
        abar = jnp.asarray(train_abar, dtype)[t_star]
        c = {
            "sqrt_recip_alphas_cumprod": jnp.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": jnp.sqrt(1.0 / abar - 1.0),
        }
        x_t = jnp.sqrt(abar) * g
        eps, _ = gaussian.split_model_output(
            call_model(model_fn, params, x_t, t_star), shape[-1], variance_type
        )
        x0 = gaussian.x0_from_eps(c, x_t, eps)
        if clip_denoised:
            x0 = clip_inclusive(x0)
        diverged = jnp.where(jnp.all(jnp.isfinite(x0)), -1, 0).astype(jnp.int32)
        return SampleResult(x0, diverged, None, {"t": t_star} if loop.keep_trajectory else None)

    return sample
