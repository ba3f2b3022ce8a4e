"""DSG, diffusion with a spherical Gaussian constraint (Yang et al., ICML 2024; official code
LingxiaoYang2023/DSG2024, Linear_Inverse_Problems/guided_diffusion `condition_methods.py` `DSG`
on `gaussian_diffusion.py` `DDIM` / `DDPM` p_sample; docs/methods.md). DPS's guidance gradient,
taken as a DIRECTION and put on the sphere where the step's noise lives:

    x0_hat = clamp(x0(x_t, eps_theta(x_t)));  mean, std: the unguided step (ddim: eta; ddpm:
             the posterior mean and the learned std); x' = mean + 1[k>0] std z
    g      = d ||y - A x0_hat|| / d x_t             (through the UNet, as DPS)
    r      = ||std||  (= sqrt(n) std for a scalar std; the noise's typical length)
    d*     = -r g / ||g||;  d_s = x' - mean;  d_m = d_s + w (d* - d_s)
    x_{t-1} = mean + r d_m / ||d_m||                (guided steps: k % interval == 0, else x')

(1e-8 added to both norms, as the code.) hparams (traced): guidance_scale w (the paper's
guidance rate, 0.1-0.2), interval (guide every interval-th step; an integer >= 1), eta (the DDIM
step's, 1 in the official runs: create_sampler's default; the ddpm step has none).

`official=True` takes the sphere radius as the code does: sqrt(n) times the std of the FIRST
pixel (`sigma_t[0, 0, 0, 0]`), even at the last step, where no noise is added: with the ddpm
step (the official 1000-step runs) and its learned per-pixel std that radius is not the noise's
length, and the last step moves the sample sqrt(n) sigma_min along -g after the chain has ended.
By default r = ||std||, 0 at the last step (identical for the ddim step, whose std is a scalar
and 0 there). The norm is per image (the official loop runs batch 1: `if t != 0` raises for
B > 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.gaussian import eps_from_x0
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    as_forward,
    check_measurement,
    posterior_step,
    residual_pullback,
    resolve_hparams,
    resolve_image_shape,
)

EPS = 1e-8  # the code's guard in both divisions


@register_sampler(
    "dsg",
    needs=("operator", "measurement"),
    hparams={"guidance_scale": 0.2, "interval": 1.0, "eta": 1.0},
    # w = 0 is the unguided step; w = 1 the pure guidance direction on the sphere
    ranges={"guidance_scale": "[0, 1]", "interval": "[1, 1000]", "eta": "[0, 1]"},
    grad=True,
)
def make_dsg(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    step: str = "ddim",
    official: bool = False,
    clip_denoised: bool = True,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"guidance_scale", "interval", "eta"},
    replay=None, valid=True)`.

    step: "ddim" (the official 20/50/100-step configs) or "ddpm" (the 1000-step config, the
    learned-range ancestral step). replay: {"x_T": (H,W,C), "noise": (K,H,W,C)}. The trajectory
    records x_pre_guidance (x'), mean, x0_hat, norm (||r||, 0 at unguided steps), radius.
    """
    del noise  # the code's DSG norm is the Gaussian one whatever the noiser
    if step not in ("ddim", "ddpm"):
        raise ValueError(f"dsg: step must be 'ddim' or 'ddpm', got {step!r}")
    forward = as_forward(operator)
    if forward is None:
        raise ValueError("dsg: needs an operator (the forward model A)")
    shape = resolve_image_shape(image_shape, operator, None, "dsg")
    steps = np.arange(schedule.num_steps)[::-1]
    kw = {"clip_denoised": clip_denoised, "remat": remat}

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # nothing couples the images
        h = resolve_hparams(defaults, hparams, "dsg")
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "dsg")
        y = jnp.asarray(y, dtype)
        w, interval, eta = (h[n].astype(dtype) for n in ("guidance_scale", "interval", "eta"))
        x_T, k_loop = initial_x(key, replay, shape, dtype, "dsg")
        root_n = jnp.sqrt(jnp.asarray(np.prod(shape), dtype))

        def step_fn(x, k, z, state):
            guided = jnp.mod(jnp.asarray(k, dtype), interval) == 0
            # one forward at every step; only the guided ones pull back through it (a second
            # network copy in an unguided branch would only add compile time)
            r, pullback, pred = residual_pullback(
                model_fn, params, schedule, x, k, forward, op_params, y, **kw
            )
            r_norm = jnp.sqrt(jnp.sum(r * r))
            g = jax.lax.cond(
                guided,
                lambda: pullback(r / jnp.where(r_norm > 0, r_norm, 1))[0],
                lambda: jnp.zeros_like(x),
            )
            norm = jnp.where(guided, r_norm, jnp.zeros((), x.dtype))
            c, x0 = pred["c"], pred["x0"]
            if step == "ddim":
                a_t, a_prev = c["alphas_cumprod"], c["alphas_cumprod_prev"]
                std = eta * jnp.sqrt((1 - a_prev) / (1 - a_t)) * jnp.sqrt(1 - a_t / a_prev)
                eps = eps_from_x0(c, x, x0)
                mean = x0 * jnp.sqrt(a_prev) + jnp.sqrt(jnp.maximum(1 - a_prev - std**2, 0)) * eps
            else:
                pmv = posterior_step(schedule, pred, x)
                mean, std = pmv["mean"], jnp.exp(0.5 * pmv["log_variance"])
            std = jnp.broadcast_to(std, x.shape)
            added = jnp.where(k > 0, std, jnp.zeros_like(std))
            x_prime = mean + added * z
            if official:  # sqrt(n) sigma_t[0, 0, 0, 0], the last step included
                radius = root_n * std[0, 0, 0]
            else:
                radius = jnp.sqrt(jnp.sum(added * added))
            d_star = -radius * g / (jnp.sqrt(jnp.sum(g * g)) + EPS)
            d_sample = x_prime - mean
            mix = d_sample + w * (d_star - d_sample)
            x_guided = mean + mix / (jnp.sqrt(jnp.sum(mix * mix)) + EPS) * radius
            x_new = jnp.where(guided, x_guided, x_prime)
            record = {"x_pre_guidance": x_prime, "mean": mean, "x0_hat": x0, "norm": norm,
                      "radius": radius}  # fmt: skip
            return x_new.astype(dtype), state, record

        return chain(step_fn, x_T, steps, key=k_loop, replay=replay, loop=loop, label="dsg")

    return sample
