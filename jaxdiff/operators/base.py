"""The operator contract shared by every forward model A (see docs/DESIGN.md).

An operator is built for one image shape `(H, W, C)` (tables such as the Resizer's depend on it, and
every shape error is raised at construction or trace time, never inside traced code):

    op = get_operator(name, image_shape=(H, W, C), **config)
    op_params = op.sample(key)       # the random part (mask, kernel) as a pytree; {} when none
    y = op.apply(op_params, x)       # A(x) for ONE image x of shape image_shape, in [-1, 1]
    x = op.adjoint(op_params, y)     # A^T y (linear operators only), from jax.linear_transpose

Batches are `jax.vmap(op.apply)` / `jax.vmap(op.sample)`: nothing here branches on values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_image_shape(image_shape, name: str) -> tuple[int, int, int]:
    """`image_shape` must be (H, W, C) positive ints; returns it as a tuple."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except TypeError:
        raise ValueError(f"{name}: image_shape must be (H, W, C), got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: image_shape must be (H, W, C) with positive sizes, got {shape}")
    return shape


class Operator:
    """Base class: subclasses set `name`, `linear` and implement `_apply` (and `sample`)."""

    name: str = "operator"
    linear: bool = True
    svd = None  # an SVDForm (jaxdiff/operators/svd.py) where H = U diag(s) V^T is tractable
    # A(x) = op_params["mask"] * x with a 0/1 mask of the image's shape (inpainting): what
    # RePaint's known-region blend needs
    pixel_mask: bool = False

    def __init__(self, image_shape):
        self.image_shape = check_image_shape(image_shape, self.name)

    # --- the contract -------------------------------------------------------------------------
    def sample(self, key) -> dict:
        """Draw the random part of the operator from `key`; deterministic operators ignore it."""
        del key
        return {}

    def apply(self, op_params, x):
        """A(x) for one image `x` of shape `image_shape`."""
        self.check_input(jnp.shape(x))
        return self._apply(op_params, x)

    def adjoint(self, op_params, y):
        """A^T y, the exact transpose of `apply` (jax.linear_transpose), for linear operators."""
        if not self.linear:
            raise TypeError(f"{self.name} is nonlinear: it has no adjoint")
        out_shape = self.output_shape()
        if tuple(jnp.shape(y)) != out_shape:
            raise ValueError(
                f"{self.name}.adjoint: y has shape {tuple(jnp.shape(y))}, expected {out_shape}"
            )
        dtype = jnp.result_type(y)
        primal = jax.ShapeDtypeStruct(self.image_shape, dtype)
        (x,) = jax.linear_transpose(lambda v: self.apply(op_params, v), primal)(y)
        return x

    def output_shape(self, input_shape=None) -> tuple[int, ...]:
        """Shape of A(x) for an input of `input_shape` (default: the configured image shape)."""
        if input_shape is not None:
            self.check_input(input_shape)
        return self._output_shape()

    def check_input(self, shape) -> None:
        """Raise ValueError unless `shape` is the (H, W, C) this operator was built for."""
        shape = tuple(int(s) for s in shape)
        if shape != self.image_shape:
            raise ValueError(
                f"{self.name}: input has shape {shape}, but the operator was built for "
                f"image_shape={self.image_shape} (one image, HWC; vmap over batches)"
            )

    # --- for subclasses -----------------------------------------------------------------------
    def _apply(self, op_params, x):
        raise NotImplementedError

    def _output_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_shape={self.image_shape})"


def check_param_shape(op_name: str, op_params, key: str, want) -> jax.Array:
    """Fetch `op_params[key]` and check its (static) shape; a clear error names both shapes."""
    try:
        value = op_params[key]
    except (KeyError, TypeError):
        msg = f"{op_name}: op_params needs a {key!r} entry (from op.sample(key))"
        raise ValueError(msg) from None
    got = tuple(jnp.shape(value))
    if got != tuple(want):
        raise ValueError(f"{op_name}: op_params[{key!r}] has shape {got}, expected {tuple(want)}")
    return value
