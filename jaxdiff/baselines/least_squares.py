"""Generic linear baselines: A^T y, zero-fill, ridge least squares by CG, bicubic upsampling.

All pure JAX and jit-able with the operator closed over.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdiff.baselines.common import (
    BLUR,
    INPAINTING,
    SUPER_RESOLUTION,
    check_measurement,
    finish,
    register_baseline,
    require_linear,
)


# every linear operator (phase retrieval is not)
@register_baseline(operators=INPAINTING + BLUR + SUPER_RESOLUTION + ("denoise", "colorize"))
def adjoint(y, operator, op_params, *, clip: bool = True):
    """A^T y with the operator's exact adjoint: the sanity floor for every linear task."""
    require_linear("adjoint", operator)
    y = check_measurement("adjoint", y, operator)
    return finish(operator.adjoint(op_params, y), clip)


# an operator whose measurement is an image (colorization's grey and phase retrieval's are not)
@register_baseline(operators=INPAINTING + BLUR + SUPER_RESOLUTION + ("denoise",))
def zero_fill(y, operator, op_params, *, clip: bool = True):
    """The measurement as an image: holes at 0 for inpainting, y itself for same-shape operators
    (blur, denoise), nearest-neighbour upsampling for super-resolution."""
    y = check_measurement("zero_fill", y, operator)
    H, W, C = operator.image_shape
    h, w, c = y.shape
    if "mask" in op_params:
        x = y * op_params["mask"].astype(y.dtype)
    elif (h, w, c) == (H, W, C):
        x = y
    elif c == C and H % h == 0 and W % w == 0:
        x = jnp.repeat(jnp.repeat(y, H // h, axis=0), W // w, axis=1)
    else:
        raise ValueError(
            f"zero_fill: no natural image for {operator.name}'s measurement {y.shape} "
            f"(image_shape {operator.image_shape}); use 'adjoint' or 'least_squares'"
        )
    return finish(x, clip)


@register_baseline(operators=SUPER_RESOLUTION)
def bicubic(y, operator, op_params, *, clip: bool = True):
    """Bicubic upsampling of a super-resolution measurement (Keys a = -0.5, jax.image 'cubic').

    Not the inverse or adjoint of the DPS Resizer, only the classical interpolation baseline.
    """
    del op_params
    y = check_measurement("bicubic", y, operator)
    H, W, C = operator.image_shape
    if y.shape[-1] != C or y.shape[0] > H or y.shape[1] > W:
        raise ValueError(
            f"bicubic: upsamples a smaller image of the same channels; {operator.name} measures "
            f"{y.shape} for image_shape {operator.image_shape}"
        )
    return finish(jax.image.resize(y, (H, W, C), method="cubic", antialias=False), clip)


# linear operators but denoising (A = I: the solve is y itself)
@register_baseline(operators=INPAINTING + BLUR + SUPER_RESOLUTION + ("colorize",))
def least_squares(
    y,
    operator,
    op_params,
    *,
    ridge: float = 1e-3,
    maxiter: int = 10,
    tol: float = 1e-6,
    x0=None,
    clip: bool = True,
):
    """argmin_x ||A x - y||^2 + ridge ||x||^2 by conjugate gradients on the normal equations.

    (A^T A + ridge I) x = A^T y with the operator's adjoint, for any linear operator. The small
    ridge makes the system positive definite where A has a null space (holes, lost frequencies:
    those stay near 0); the few default iterations regularise by early stopping (noisy blur at
    sigma 0.05: 10 iterations +2 dB over the blurred y, 30 iterations worse than y).
    """
    name = "least_squares"
    require_linear(name, operator)
    y = check_measurement(name, y, operator)
    if not ridge >= 0 or maxiter < 1:
        raise ValueError(f"{name}: need ridge >= 0 and maxiter >= 1, got {ridge}, {maxiter}")

    x0 = jnp.zeros(operator.image_shape, y.dtype) if x0 is None else jnp.asarray(x0, y.dtype)
    return finish(_cg_normal_equations(operator, int(maxiter), y, op_params, ridge, tol, x0), clip)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _cg_normal_equations(operator, maxiter, y, op_params, ridge, tol, x0):
    """Compiled once per (operator, maxiter, shapes): a Python loop over images reuses it."""

    def normal(x):
        return operator.adjoint(op_params, operator.apply(op_params, x)) + ridge * x

    rhs = operator.adjoint(op_params, y)
    x, _ = jax.scipy.sparse.linalg.cg(normal, rhs, x0=x0, tol=tol, maxiter=maxiter)
    return x
