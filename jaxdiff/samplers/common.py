"""Pieces every sampler shares: the result type, the model call, the ancestral step, checks.

A sampler is written for ONE image (H, W, C); `model_fn` takes batches, so a single image is
called as a batch of one, which `jax.vmap` turns back into one batched model call.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff.diffusion import gaussian

BATCH_AXIS = "batch"
"""The one name of the image axis: `batched`'s vmap, the batch-coupled reductions below and the
device mesh of jaxdiff.sharding."""


def batch_sum(v, valid, where: str, flag: str):
    """Sum of `v` over the images of a `batched(...)` call (padding, valid=False, excluded):
    the whole-batch reductions some official codes couple their images with (DPS's norm,
    RED-diff's loss mean), reproduced behind each method's flag for exact parity."""
    try:
        return jax.lax.psum(jnp.where(valid, v, jnp.zeros_like(v)), BATCH_AXIS)
    except NameError as err:
        raise ValueError(
            f"{where}: {flag}=True needs the sampler wrapped in "
            f"jaxdiff.samplers.batched(...) (it sums over the {BATCH_AXIS!r} vmap axis)"
        ) from err


class SampleResult(NamedTuple):
    """What a sample function returns, for one image (leading axes added by `batched`).

    x0: the final sample. diverged_at: the sampling step (0 = first, noisiest) at which the image
    went non-finite, -1 if it never did; the image is frozen at its last finite value from then
    on. snapshots: x after every `snapshot_every` steps (and after the last), or None.
    trajectory: per-step records (x after each step and method extras such as x0_hat) when
    `keep_trajectory=True`, else None. Particle samplers (samplers/particles.py) add their
    final particles (N, H, W, C), normalised float32 log-weights (N,) and the effective sample
    size at every sampling step (K,); x0 is then their stated estimator. None elsewhere.
    """

    x0: jax.Array
    diverged_at: jax.Array
    snapshots: jax.Array | None = None
    trajectory: dict | None = None
    particles: jax.Array | None = None
    log_weights: jax.Array | None = None
    ess: jax.Array | None = None


def call_model(model_fn, params, x, t, remat: bool = False):
    """`model_fn` on one image: a batch of one in, one image out."""
    fn = jax.checkpoint(model_fn) if remat else model_fn
    t = jnp.asarray(t, dtype=jnp.int32)
    return fn(params, x[None], t[None])[0]


def clip_inclusive(x, lo: float = -1.0, hi: float = 1.0):
    """clip(x, lo, hi) whose gradient is 1 on the closed interval [lo, hi], like torch.clamp.

    jnp.clip's gradient splits or vanishes at the boundaries; the reference passes it there.
    """
    inside = (x >= lo) & (x <= hi)
    return jnp.where(inside, x, jax.lax.stop_gradient(jnp.clip(x, lo, hi)))


def as_forward(operator):
    """The forward model as `A(op_params, x)`: an Operator (its `.apply`), or any function of
    `(op_params, x)` or of `x` alone."""
    if operator is None:
        return None
    if hasattr(operator, "apply"):
        return operator.apply
    if not callable(operator):
        raise TypeError(f"operator must be an Operator or a function, got {type(operator)}")
    try:
        n = len(
            [
                p
                for p in inspect.signature(operator).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        )
    except (TypeError, ValueError):
        n = 2
    if n == 1:
        return lambda op_params, x: operator(x)
    return operator


def check_measurement(forward, op_params, x, y, where: str) -> None:
    """Trace-time check that A(x) has y's shape; names both shapes."""
    if forward is None:
        raise ValueError(f"{where}: this sampler needs an operator (the forward model A)")
    if y is None:
        raise ValueError(f"{where}: this sampler needs the measurement y")
    out = jax.eval_shape(forward, op_params, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if tuple(out.shape) != tuple(jnp.shape(y)):
        raise ValueError(
            f"{where}: the operator maps an image {tuple(x.shape)} to {tuple(out.shape)}, but the "
            f"measurement y has shape {tuple(jnp.shape(y))} (one image, HWC; batch with batched())"
        )


def resolve_hparams(defaults: dict, hparams, where: str) -> dict:
    """Traced hyperparameters: the factory's defaults overridden by `hparams` (dict of scalars)."""
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"{where}: unknown hyperparameter(s) {unknown}; known: {known}")
    out = {}
    for name, default in defaults.items():
        value = hparams.get(name, default)
        if value is None:
            raise ValueError(f"{where}: hyperparameter {name!r} has no value and no default")
        out[name] = jnp.asarray(value)
    return out


def noise_sigma(noise) -> float | None:
    """The Gaussian measurement-noise std of a noise model, when it exposes one."""
    for attr in ("sigma", "std"):
        value = getattr(noise, attr, None)
        if value is not None:
            return float(value)
    return None


def noise_kind(noise) -> str | None:
    name = getattr(noise, "name", None)
    return None if name is None else str(name)


def predict_x0(model_fn, params, schedule, x, k, *, clip_denoised: bool, remat=False) -> dict:
    """The x0 prediction every sampler shares: one model call at respaced step k.

    Returns the step's float tables `c`, eps, the variance channels `v` (None unless learned) and
    x0_hat = x0(x_t, eps), clipped to [-1, 1] (torch.clamp's gradient) when `clip_denoised`.
    """
    c = schedule.gather(k, x.dtype)
    out = call_model(model_fn, params, x, c["timestep"], remat=remat)
    if out.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"the model maps an image {x.shape} to {out.shape}: spatial size differs")
    eps, v = gaussian.split_model_output(out, x.shape[-1], schedule.variance_type)
    x0 = gaussian.x0_from_eps(c, x, eps)
    if clip_denoised:
        x0 = clip_inclusive(x0)
    return {"c": c, "eps": eps, "v": v, "x0": x0}


def p_mean_variance(model_fn, params, schedule, x, k, *, clip_denoised: bool, remat=False) -> dict:
    """One model call at respaced step k: eps, x0_hat, posterior mean and log variance.

    The expressions and their order follow guided-diffusion's p_mean_variance (float32 tables
    gathered per step), so a float32 replay stays at the reference's rounding noise.
    """
    pred = predict_x0(model_fn, params, schedule, x, k, clip_denoised=clip_denoised, remat=remat)
    return posterior_step(schedule, pred, x)


def posterior_step(schedule, pred: dict, x) -> dict:
    """`pred` (from predict_x0) with the posterior mean and log variance of q(x_{t-1} | x_t, x0)."""
    c = pred["c"]
    return {
        **pred,
        "mean": gaussian.posterior_mean(c, pred["x0"], x),
        "log_variance": gaussian.log_variance(schedule.variance_type, c, pred["v"]),
    }


def ancestral(pmv: dict, k, z):
    """x_{t-1} = mean + 1[k > 0] exp(logvar/2) z (no noise at the last step)."""
    noise = jnp.exp(0.5 * pmv["log_variance"]) * z
    return pmv["mean"] + jnp.where(k > 0, noise, jnp.zeros_like(noise))


def resolve_image_shape(image_shape, operator, y, where: str) -> tuple[int, int, int]:
    """The sampled image's (H, W, C): given, else the operator's, else the measurement's."""
    if image_shape is None:
        image_shape = getattr(operator, "image_shape", None)
    if image_shape is None and y is not None:
        image_shape = jnp.shape(y)
    if image_shape is None:
        raise ValueError(f"{where}: pass image_shape=(H, W, C) (nothing else gives the image size)")
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"{where}: image_shape must be (H, W, C) for one image, got {shape}")
    return shape


def default_guide(y, image_shape, where: str):
    """An image from the measurement, for SDEdit / Tweedie: y itself when it is image-shaped,
    a bicubic upsampling when only the spatial size differs; otherwise pass `guide=`."""
    image_shape = tuple(image_shape)
    if tuple(y.shape) == image_shape:
        return y
    if y.ndim == 3 and y.shape[-1] == image_shape[-1]:
        return jax.image.resize(y, image_shape, "cubic")
    raise ValueError(
        f"{where}: cannot make a guide image {image_shape} from a measurement {tuple(y.shape)}; "
        "pass guide=lambda op_params, y: image"
    )


def make_guide(guide, image_shape, where: str):
    """`guide(op_params, y) -> image`, checked to return an image of `image_shape`."""

    def fn(op_params, y):
        if y is None:
            raise ValueError(f"{where}: this sampler needs the measurement y")
        g = default_guide(y, image_shape, where) if guide is None else guide(op_params, y)
        if tuple(g.shape) != tuple(image_shape):
            raise ValueError(f"{where}: guide image has shape {g.shape}, expected {image_shape}")
        return g

    return fn


def residual_pullback(model_fn, params, schedule, x, k, forward, op_params, y, **kw):
    """r = y - A(x0_hat(x_t)) with its VJP back to x_t THROUGH the network, and the prediction
    (DPS's guidance gradient, shared by the samplers that differentiate ||r|| w.r.t. x_t).

    Returns (r, pullback, pred); `pullback(r / ||r||)` is d||r|| / d x_t. kw: clip_denoised,
    remat (as predict_x0).
    """

    def residual(x_in):
        pred = predict_x0(model_fn, params, schedule, x_in, k, **kw)
        return y - forward(op_params, pred["x0"]), pred

    return jax.vjp(residual, x, has_aux=True)
