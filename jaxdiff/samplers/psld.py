"""PSLD, posterior sampling with latent diffusion (Rout et al., NeurIPS 2023; LituRout/PSLD
stable-diffusion/ldm/models/diffusion/psld.py `p_sample_ddim`, docs/methods.md): Latent DPS
plus the "gluing" term that asks z0_hat to be a fixed point of decode -> replace the measured
part by y -> encode:

    z0_hat  = z0(z_t, eps_theta(z_t));   x0 = D(z0_hat)
    z'      = sqrt(abar_prev) z0_hat + c1 n + c2 eps                        (CompVis DDIM)
    glued   = B y + x0 - B A x0                 (B = A^T, the paper's form; see `gluing`)
    z_{t-1} = z' - grad_{z_t} [ omega ||y - A x0|| + gamma ||E(glued) - z0_hat|| ]

with un-squared norms, the gradient through the UNet, the decoder and the encoder. Per-image
norms by default; `batch_coupled_norm=True` is the official whole-batch norm.

`official=True` reproduces the official code's choices that the paper does not make: B is the
operators' `transpose` of PSLD's copy of DPS measurements.py (identity for inpainting and the
blurs, nearest-neighbour upsampling by the factor for super-resolution) instead of A^T; a fresh
N(0, sigma^2) draw is added to A x0 before the measurement norm at every step (`noiser(
meas_pred)`); and E is a posterior sample of a KL first stage (`get_first_stage_encoding` calls
`.sample()`), one more standard-normal draw per step. The default uses A^T, y itself and the
encoder's mean. `gluing="pinv"` takes B = A^+ instead (the projection onto {x: A x = y}; equal
to A^T for inpainting).
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

GLUING = ("adjoint", "pinv")
IDENTITY_TRANSPOSE = ("gaussian_blur", "motion_blur", "blur", "denoise")
IDENTITY_TRANSPOSE += ("inpaint", "inpaint_box", "inpaint_random")


def official_transpose(operator):
    """PSLD's `operator.transpose` (its copy of DPS guided_diffusion/measurements.py): identity
    for inpainting, the blurs and denoising, F.interpolate(scale_factor) (nearest) for SR."""
    name = getattr(operator, "name", type(operator).__name__)
    if name in IDENTITY_TRANSPOSE:
        return lambda op_params, y: y
    if name == "super_resolution":
        f = int(operator.factor)
        return lambda op_params, y: jnp.repeat(jnp.repeat(y, f, axis=0), f, axis=1)
    raise ValueError(f"psld: official=True: PSLD's code has no transpose for operator {name!r}")


def back_projection(operator, gluing: str, official: bool):
    """B of the glued image B y + x - B A x."""
    if official:
        return official_transpose(operator)
    if gluing == "adjoint":
        return operator.adjoint
    from jaxdiff.operators.pinv import make_pinv

    return make_pinv(operator)


@register_sampler(
    "psld",
    needs=("operator", "linear", "measurement", "latent_prior"),
    hparams={"omega": 1.0, "gamma": 0.1, "eta": 0.0},
    ranges={"omega": "[0, 100]", "gamma": "[0, 100]", "eta": "[0, 1]"},
    grad=True,
)
def make_psld(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    latent,
    image_shape=None,
    gluing: str = "adjoint",
    batch_coupled_norm: bool = False,
    official: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"omega", "gamma", "eta"}, replay=None,
    valid=True)`; result.x0 is the decoded image. omega / gamma: inverse.py --omega / --gamma.
    replay: {"x_T": (h,w,c), "noise": {"z": (K,h,w,c)[, "meas": (K, *y.shape)][, "enc":
    (K,h,w,c)]}} ("meas" and "enc" with official=True, "enc" for a KL first stage); the
    trajectory records z0_hat, eps, x0_hat, the glued image and its encoding, both norms."""
    del image_shape
    if gluing not in GLUING:
        raise ValueError(f"psld: gluing must be one of {GLUING}, got {gluing!r}")
    forward = as_forward(operator)
    back = back_projection(operator, gluing, official)
    lshape, ishape = tuple(latent.latent_shape), tuple(latent.image_shape)
    tables = ldm_ddim_tables(schedule)
    steps = np.arange(schedule.num_steps)[::-1]
    sigma = noise_sigma(noise) or 0.0
    noisy = official and sigma > 0
    sampled = official and latent.stochastic_encoder

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        h = resolve_hparams(defaults, hparams, "psld")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(ishape, dtype), y, "psld")
        z_T, k_loop = initial_x(key, replay, lshape, dtype, "psld")
        by = back(op_params, y)

        def draw(k, z):
            kz, km, ke = jax.random.split(k, 3)
            out = {"z": jax.random.normal(kz, z.shape, z.dtype)}
            if noisy:
                out["meas"] = jax.random.normal(km, y.shape, y.dtype)
            if sampled:
                out["enc"] = jax.random.normal(ke, z.shape, z.dtype)
            return out

        def step(z, k, n, state):
            def residuals(z_in):
                pred = latent_x0(model_fn, params, schedule, z_in, k, remat=remat)
                x0 = latent.decode(params, pred["x0"])
                ax = forward(op_params, x0)
                glued = by + x0 - back(op_params, ax)
                z_glued = latent.encode(params, glued, n.get("enc"))
                if noisy:
                    ax = ax + jnp.asarray(sigma, dtype) * n["meas"]
                aux = (pred, x0, glued, z_glued)
                return {"meas": y - ax, "glue": z_glued - pred["x0"]}, aux

            weights = {"meas": h["omega"].astype(dtype), "glue": h["gamma"].astype(dtype)}
            grad, norms, (pred, x0, glued, z_glued) = norm_guidance(
                residuals, z, weights, coupled=batch_coupled_norm, valid=valid
            )
            tab = gather_tables(tables, k, dtype)
            z_prime = ddim_latent_step(pred, z, tab, h["eta"].astype(dtype), n["z"])
            record = {"z_pre_guidance": z_prime, "z0_hat": pred["x0"], "eps": pred["eps"]}
            record.update(x0_hat=x0, glued=glued, z_glued=z_glued)
            record.update(meas_norm=norms["meas"], glue_norm=norms["glue"])
            return z_prime - grad, state, record

        out = chain(step, z_T, steps, key=k_loop, replay=replay, loop=loop, label="psld", draw=draw)
        return decoded(latent, params, out)

    return sample
