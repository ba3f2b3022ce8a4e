"""The baselines' registry and the checks they share: every one takes (y, operator, op_params,
**cfg)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax.numpy as jnp

from jaxdiff.registry import Registry

BASELINES: Registry = Registry("baseline")
# What each baseline declares at its definition (register_baseline): the jaxdiff.operators it
# works on, and whether it runs host-side (numpy / OpenCV: loop over a batch, no jit or vmap).
OPERATORS: dict[str, frozenset[str]] = {}
HOST_SIDE: set[str] = set()

INPAINTING = ("inpaint_box", "inpaint_random", "inpaint")
BLUR = ("gaussian_blur", "motion_blur", "blur")
SUPER_RESOLUTION = ("super_resolution",)


def register_baseline(*, operators: Iterable[str], host_side: bool = False) -> Callable:
    """Register a baseline under its function's name with the operators it applies to."""

    def add(fn):
        BASELINES.register(fn.__name__)(fn)
        OPERATORS[fn.__name__] = frozenset(operators)
        if host_side:
            HOST_SIDE.add(fn.__name__)
        return fn

    return add


def check_measurement(name: str, y, operator):
    """y must be what `operator.apply` returns for one image; returns it as a float array."""
    y = jnp.asarray(y)
    want = tuple(operator.output_shape())
    if tuple(y.shape) != want:
        raise ValueError(
            f"{name}: y has shape {tuple(y.shape)}, but {operator.name} built for image_shape "
            f"{operator.image_shape} measures {want} (one image, HWC; vmap over batches)"
        )
    return y.astype(jnp.result_type(y.dtype, jnp.float32))


def require_linear(name: str, operator) -> None:
    if not getattr(operator, "linear", False):
        raise TypeError(
            f"{name}: needs a linear operator with an adjoint; {operator.name} is nonlinear"
        )


def require_param(name: str, operator, op_params, key: str, what: str):
    """Fetch op_params[key] (a mask, a kernel) or say which operators this baseline is for."""
    try:
        return op_params[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"{name}: works on {what} operators (op_params[{key!r}]); "
            f"{operator.name} has no {key!r} in its op_params"
        ) from None


def finish(x, clip: bool):
    """Baselines return images in [-1, 1] like the samplers do (clip=False keeps the raw solve)."""
    return jnp.clip(x, -1.0, 1.0) if clip else x
