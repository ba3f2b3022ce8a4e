"""What the latent-space posterior samplers share (Latent DPS, PSLD, ReSample, Latent-DAPS).

The latent prior (`jaxdiff.latent.LatentPrior`: UNet, first stage, text context) sits above the
sampler core (tests/test_layering.py), so a latent method reaches the decoder and the encoder
only through a `LatentFns` passed to its factory, never through copies of the networks:

    make = get_sampler("latent_dps")
    sample = make(model_fn, schedule, operator=op, noise=noise, latent=fns, scale=1.0)
    result = sample(params, key, y, op_params, hparams)   # result.x0: the decoded image

API (stable; other latent methods build on it):

- `LatentFns(decode, encode, latent_shape, image_shape, stochastic_encoder=False, scale=1.0,
  shift=0.0)`, for ONE image: `decode(params, z)` (h, w, c) latent -> (H, W, C) image in about
  [-1, 1];
  `encode(params, x, noise=None)` image -> latent: the encoder's mean, or with `noise` (a
  standard normal of the latent's shape) the posterior sample mean + std * noise where the first
  stage is a KL (`stochastic_encoder=True`; a VQ or any deterministic encoder ignores `noise`).
  The latent is the first stage's own output h as `(h - shift) * scale` (the prior's
  scaling_factor and shift_factor).
  Both are pure and differentiable (`jax.vjp` goes through them). `jaxdiff.latent.latent_fns`
  builds one from a loaded prior; the tests pass linear maps.
- `model_fn(params, z, t)`: the latent denoiser's eps on batches (B, h, w, c) / (B,), taking
  the same `params` pytree as decode / encode (the driver folds the unconditional context in).
- The "latent_prior" need (samplers/base.py): `SamplerSpec.__call__` refuses a latent method
  without `latent=` (a pixel-space model) and a pixel method given one (`check_latent`), each
  with one ValueError, and checks the operator's image size against `latent.image_shape`.
- The operator acts on the DECODED image; y is a pixel-space measurement.
- `ldm_ddim_tables(schedule)`: abar_t and abar_prev per respaced step as the CompVis DDIM
  sampler builds them (the last step's abar_prev is abar[0], not 1; `make_ddim_sampling_
  parameters`), and `ddim_latent_step` the step on them.
- `latent_x0`: `common.predict_x0` without a clamp (latents are not bounded to [-1, 1]).
- `norm_guidance`: the gradient w.r.t. z_t of sum_i w_i ||r_i(z_t)|| (un-squared norms, as
  DPS / PSLD), optionally batch-coupled (a psum over the "batch" axis, pulled back with the
  cotangent w_i r_i / ||r_i|| so the psum itself is not differentiated).
- `decoded(latent, params, out)`: the chain's result with x0 decoded to the image (snapshots
  and trajectory stay latents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.gaussian import ddim_step
from jaxdiff.samplers import common
from jaxdiff.samplers.common import SampleResult, predict_x0


class LatentFns(NamedTuple):
    """The first stage as a sampler sees it, for ONE image (see the module docstring)."""

    decode: Callable  # (params, z (h,w,c)) -> x (H,W,C)
    encode: Callable  # (params, x (H,W,C), noise=None) -> z (h,w,c)
    latent_shape: tuple
    image_shape: tuple
    stochastic_encoder: bool = False
    # the first stage's scaling: latent = (h - shift) * scale for the encoder's own output h
    # (official forms that skip it, ReSample's encode_first_stage, undo it with these)
    scale: float = 1.0
    shift: float = 0.0


def check_latent(name: str, needs, latent, operator=None) -> None:
    """The "latent_prior" need against what was given: a clear ValueError either way."""
    if "latent_prior" in needs:
        if latent is None:
            raise ValueError(
                f"{name}: a latent-space method needs a latent prior (latent=LatentFns: the "
                "decoder and encoder); the model given is a pixel-space model. Use a latent "
                "prior folder (pipeline.json) as the model, or a pixel-space method"
            )
        if not isinstance(latent, LatentFns):
            raise ValueError(f"{name}: latent must be a LatentFns, got {type(latent).__name__}")
        shape = getattr(operator, "image_shape", None)
        if shape is not None and tuple(shape) != tuple(latent.image_shape):
            raise ValueError(
                f"{name}: the latent prior decodes {tuple(latent.image_shape)} images, but "
                f"operator {getattr(operator, 'name', '')!r} takes {tuple(shape)}; build the "
                "operator at the decoder's image size"
            )
    elif latent is not None:
        raise ValueError(
            f"{name}: a pixel-space method was given a latent prior; use a latent method "
            "(latent_dps, psld, ...) or a pixel-space model (jaxdiff.json)"
        )


def latent_x0(model_fn, params, schedule, z, k, *, remat: bool = False) -> dict:
    """eps and z0_hat at respaced step k (no clamp: latents are unbounded)."""
    return predict_x0(model_fn, params, schedule, z, k, clip_denoised=False, remat=remat)


def ldm_ddim_tables(schedule) -> dict[str, np.ndarray]:
    """{"abar", "abar_prev"} per respaced step k (ascending): abar_prev[k] = abar at the kept
    step below, abar_train[0] at k = 0 (CompVis make_ddim_sampling_parameters; diffusers'
    DDIMScheduler with set_alpha_to_one=False)."""
    train = np.asarray(schedule.train_alphas_cumprod, np.float64)
    tmap = np.asarray(schedule.timestep_map, np.int64)
    abar = train[tmap]
    prev = np.concatenate([[train[0]], abar[:-1]])
    return {"abar": abar, "abar_prev": prev}


def gather_tables(tables: dict, k, dtype) -> dict:
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    return {n: jnp.asarray(v.astype(dtype))[k] for n, v in tables.items()}


def ddim_latent_step(pred: dict, z, tab: dict, eta, noise):
    """z_prev = sqrt(abar_prev) z0 + c1 noise + c2 eps (CompVis p_sample_ddim, eta traced)."""
    return ddim_step(pred["x0"], pred["eps"], tab["abar"], tab["abar_prev"], eta, noise)


def norm_guidance(
    residuals_fn, z, weights: dict, *, coupled: bool = False, valid=True,
    where: str = "latent sampler", flag: str = "batch_coupled_norm",
):  # fmt: skip
    """(grad_z sum_i w_i ||r_i||, norms, aux) for `residuals_fn(z) -> ({name: r_i}, aux)`.

    With `coupled` each norm is the whole batch's (the official codes' torch.linalg.norm of the
    batch tensor; needs `batched(...)`: `where` and `flag` name the sampler and its option in the
    error otherwise); a zero residual contributes nothing."""
    res, pullback, aux = jax.vjp(residuals_fn, z, has_aux=True)
    valid = jnp.asarray(valid, bool)
    norms, cot = {}, {}
    for name, r in res.items():
        sq = jnp.sum(r * r)
        if coupled:
            sq = common.batch_sum(sq, valid, where, flag)
        norm = jnp.sqrt(sq)
        norms[name] = norm
        w = jnp.asarray(weights[name], r.dtype)
        cot[name] = r * (w / jnp.where(norm > 0, norm, jnp.ones_like(norm)))
    (grad,) = pullback(cot)
    return grad, norms, aux


def decoded(latent: LatentFns, params, out: SampleResult) -> SampleResult:
    """The result with x0 the decoded image of the final latent."""
    return out._replace(x0=latent.decode(params, out.x0))


def linear_latent(matrix, latent_shape, image_shape, encoder=None) -> LatentFns:
    """A linear first stage x = M z (flattened), encode = E x (default the pseudo-inverse of M):
    with a Gaussian latent prior the posterior is Gaussian (tests' closed form)."""
    m = jnp.asarray(matrix, jnp.float32)
    e = jnp.asarray(np.linalg.pinv(np.asarray(matrix, np.float64)) if encoder is None else encoder,
                    jnp.float32)  # fmt: skip
    lshape, ishape = tuple(latent_shape), tuple(image_shape)

    def decode(params, z):
        del params
        return (m @ z.reshape(-1)).reshape(ishape)

    def encode(params, x, noise=None):
        del params, noise
        return (e @ x.reshape(-1)).reshape(lshape)

    return LatentFns(decode, encode, lshape, ishape, False)
