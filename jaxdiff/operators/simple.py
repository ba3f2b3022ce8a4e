"""Pointwise linear operators: denoising (identity) and colorization (grayscale projection).

- `denoise`: A = I (DPS registers it as 'noise'); y = x + noise.
- `colorize`: A(x) = sum_c w_c x[..., c] -> (H, W, 1). `weights="mean"` (1/3 each, the
  projection used by DDRM/DDNM colorization) or `"bt601"` (0.299, 0.587, 0.114, the luma of
  PIL's convert("L")), or any sequence of C weights. Needs C == len(weights).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from jaxdiff.operators.base import Operator
from jaxdiff.operators.svd import IdentitySVD, PixelSVD

GRAY_WEIGHTS = {"mean": (1 / 3, 1 / 3, 1 / 3), "bt601": (0.299, 0.587, 0.114)}


class Denoise(Operator):
    """The identity: the measurement is the noisy image itself."""

    name = "denoise"

    @functools.cached_property
    def svd(self):
        return IdentitySVD(self.image_shape)

    def _apply(self, op_params, x):
        del op_params
        return x


class Colorize(Operator):
    """Grayscale projection of a colour image, keeping one channel."""

    name = "colorize"

    def __init__(self, image_shape, weights="mean"):
        super().__init__(image_shape)
        if isinstance(weights, str):
            if weights not in GRAY_WEIGHTS:
                known = ", ".join(GRAY_WEIGHTS)
                raise ValueError(f"colorize: unknown weights {weights!r}; known: {known}")
            weights = GRAY_WEIGHTS[weights]
        weights = np.asarray(weights, np.float32).reshape(-1)
        if weights.shape[0] != self.image_shape[2]:
            raise ValueError(
                f"colorize: {weights.shape[0]} channel weights for an image with "
                f"{self.image_shape[2]} channels"
            )
        self.weights = weights

    @functools.cached_property
    def svd(self):
        """Per pixel the (1, C) row of weights: singular |w|, V's first column w / |w|."""
        return PixelSVD(self.image_shape, self.weights)

    def _output_shape(self):
        H, W, _ = self.image_shape
        return (H, W, 1)

    def _apply(self, op_params, x):
        del op_params
        return jnp.sum(x * jnp.asarray(self.weights, x.dtype), axis=-1, keepdims=True)
