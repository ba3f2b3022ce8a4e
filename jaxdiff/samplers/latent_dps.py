"""Latent DPS: DPS through the decoder of a latent prior (the baseline of PSLD, Rout et al.,
NeurIPS 2023; LituRout/PSLD stable-diffusion/ldm/models/diffusion/psld.py p_sample_ddim with
gamma = 0; docs/methods.md):

    z0_hat  = z0(z_t, eps_theta(z_t))                       (no clamp)
    z'      = sqrt(abar_prev) z0_hat + c1 n + c2 eps        (CompVis DDIM, eta traced)
    z_{t-1} = z' - scale * d ||y - A(D(z0_hat))|| / d z_t   (un-squared; through D and UNet)

on the CompVis DDIM grid (respacing "ldmN"; abar_prev of the last step is abar[0]). Per-image
norm by default; `batch_coupled_norm=True` is the official whole-batch norm. `official=True`
also adds, as the official code does (`noiser(meas_pred)`), a fresh N(0, sigma^2) draw to
A(D(z0_hat)) before the norm at every step (sigma: the noise model's); the correct default
compares A(D(z0_hat)) with y itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import as_forward, check_measurement, noise_sigma, resolve_hparams
from jaxdiff.samplers.latent_common import (
    ddim_latent_step,
    decoded,
    gather_tables,
    latent_x0,
    ldm_ddim_tables,
    norm_guidance,
)


@register_sampler(
    "latent_dps",
    needs=("operator", "measurement", "latent_prior"),
    hparams={"scale": 1.0, "eta": 0.0},
    ranges={"scale": "[0, 100]", "eta": "[0, 1]"},
    grad=True,
)
def make_latent_dps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    latent,
    image_shape=None,
    batch_coupled_norm: bool = False,
    official: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"scale", "eta"}, replay=None, valid=True)`;
    result.x0 is the decoded image. scale: the official `omega` (PSLD's inverse.py --omega).
    replay: {"x_T": (h,w,c), "noise": {"z": (K,h,w,c)[, "meas": (K, *y.shape)]}}; trajectory
    records z0_hat, eps, the decoded x0_hat and the norm."""
    del image_shape
    forward = as_forward(operator)
    lshape, ishape = tuple(latent.latent_shape), tuple(latent.image_shape)
    tables = ldm_ddim_tables(schedule)
    steps = np.arange(schedule.num_steps)[::-1]
    sigma = noise_sigma(noise) or 0.0
    noisy = official and sigma > 0

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        h = resolve_hparams(defaults, hparams, "latent_dps")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(ishape, dtype), y, "latent_dps")
        z_T, k_loop = initial_x(key, replay, lshape, dtype, "latent_dps")

        def draw(k, z):
            kz, km = jax.random.split(k)
            out = {"z": jax.random.normal(kz, z.shape, z.dtype)}
            if noisy:
                out["meas"] = jax.random.normal(km, y.shape, y.dtype)
            return out

        def step(z, k, n, state):
            def residuals(z_in):
                pred = latent_x0(model_fn, params, schedule, z_in, k, remat=remat)
                x0 = latent.decode(params, pred["x0"])
                ax = forward(op_params, x0)
                if noisy:
                    ax = ax + jnp.asarray(sigma, dtype) * n["meas"]
                return {"meas": y - ax}, (pred, x0)

            weights = {"meas": h["scale"].astype(dtype)}
            grad, norms, (pred, x0) = norm_guidance(
                residuals, z, weights, coupled=batch_coupled_norm, valid=valid
            )
            tab = gather_tables(tables, k, dtype)
            z_prime = ddim_latent_step(pred, z, tab, h["eta"].astype(dtype), n["z"])
            record = {"z_pre_guidance": z_prime, "z0_hat": pred["x0"], "eps": pred["eps"]}
            record.update(x0_hat=x0, norm=norms["meas"])
            return z_prime - grad, state, record

        out = chain(
            step, z_T, steps, key=k_loop, replay=replay, loop=loop, label="latent_dps", draw=draw
        )
        return decoded(latent, params, out)

    return sample
