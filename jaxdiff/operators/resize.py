"""Super-resolution: DPS's MATLAB-style antialiased bicubic Resizer, and average pooling.

DPS util/resizer.py (from assafshocher/resizer) downsamples by 1/factor with the Keys cubic
(a = -0.5) stretched by `factor` (antialiasing: k(x) = s cubic(s x), s = 1/factor, 4*factor taps),
weights normalised per output pixel, borders by mirror indexing with the edge repeated (numpy
'symmetric'), H (dim 2) first, then W. `resizer_tables` recomputes its tables in numpy exactly as
the reference does (`weights`, `field_of_view`, both (taps, out) like the stored fixture arrays:
out[o] = sum_k w[k, o] in[fov[k, o]]); `apply` uses them as two dense (out, in) matrices at HIGHEST
precision (fast on accelerators, and their transpose is the true adjoint; DPS's own `transpose` is
nearest upsampling, not an adjoint). `jax.image.resize(antialias=True)` differs at the borders.

`get_operator("super_resolution", image_shape=(256, 256, 3), factor=4)` is DPS
configs/super_resolution_config.yaml; `method="avg_pool"` averages factor x factor blocks (H and W
divisible by `factor`). The Resizer takes any size: its output is ceil(H / factor) x
ceil(W / factor), as the reference's (a 32 px image at factor 3: 11 x 11).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.operators.base import Operator
from jaxdiff.operators.svd import SeparableSVD

_HIGHEST = lax.Precision.HIGHEST
_METHODS = ("bicubic", "avg_pool")


def _cubic(x):
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (
        -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    ) * ((1 < absx) & (absx <= 2))


def resizer_tables(in_length: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Resizer `contributions` for in_length -> in_length / factor along one axis.

    Returns (weights float32 (taps, out), field_of_view int64 (taps, out)), the arrays DPS stores as
    `resizer_dim{2,3}_weights` / `resizer_dim{2,3}_field_of_view`.
    """
    scale = 1.0 / factor
    out_length = int(np.ceil(in_length * scale))
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0

    def kernel(arg):
        return scale * _cubic(scale * arg) if antialias else _cubic(arg)

    out_coordinates = np.arange(1, out_length + 1)
    shifted = out_coordinates - (out_length - in_length * scale) / 2
    match = shifted / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(match - kernel_width / 2)
    expanded = np.ceil(kernel_width) + 2
    fov = np.int16(left[:, None] + np.arange(expanded) - 1)
    weights = kernel(1.0 * match[:, None] - fov - 1)
    total = np.sum(weights, axis=1)
    total[total == 0] = 1.0
    weights = weights / total[:, None]
    mirror = np.concatenate((np.arange(in_length), np.arange(in_length - 1, -1, step=-1)))
    fov = mirror[np.mod(fov, mirror.shape[0])]
    keep = np.any(weights, axis=0)  # drop taps that are zero for every output
    return weights[:, keep].T.astype(np.float32), fov[:, keep].T.astype(np.int64)


def tables_to_matrix(weights: np.ndarray, fov: np.ndarray, in_length: int) -> np.ndarray:
    """The (out, in) float32 matrix of a Resizer axis (mirrored taps that coincide are summed)."""
    taps, out = weights.shape
    mat = np.zeros((out, in_length), np.float64)
    np.add.at(mat, (np.broadcast_to(np.arange(out), (taps, out)), fov), weights)
    return mat.astype(np.float32)


def _block_mean(n: int, f: int) -> np.ndarray:
    """(n / f, n) matrix averaging consecutive blocks of f entries."""
    return np.kron(np.eye(n // f), np.full((1, f), 1.0 / f))


class SuperResolution(Operator):
    """Downsampling by an integer factor (the DPS Resizer, or block averaging)."""

    name = "super_resolution"

    def __init__(self, image_shape, factor=4, method="bicubic"):
        super().__init__(image_shape)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"super_resolution: factor must be a positive integer, got {factor}")
        if method not in _METHODS:
            known = ", ".join(_METHODS)
            raise ValueError(f"super_resolution: unknown method {method!r}; known: {known}")
        self.factor = f = int(factor)
        self.method = method
        H, W, _ = self.image_shape
        if method == "avg_pool" and (H % f or W % f):
            raise ValueError(
                f"super_resolution: image {H}x{W} is not divisible by factor {f} "
                f"(avg_pool averages whole {f}x{f} blocks; the bicubic Resizer takes any size)"
            )
        self.tables = {}
        if method == "bicubic":
            wh, fh = resizer_tables(H, f)
            ww, fw = resizer_tables(W, f)
            self.tables = {
                "dim2_weights": wh,
                "dim2_field_of_view": fh,
                "dim3_weights": ww,
                "dim3_field_of_view": fw,
            }
            self.matrix_h = tables_to_matrix(wh, fh, H)
            self.matrix_w = tables_to_matrix(ww, fw, W)

    @functools.cached_property
    def svd(self):
        """Separable: the SVDs of the two 1-D (out, in) matrices (block means for avg_pool)."""
        H, W, _ = self.image_shape
        if self.method == "avg_pool":
            f = self.factor
            return SeparableSVD(self.image_shape, _block_mean(H, f), _block_mean(W, f))
        return SeparableSVD(self.image_shape, self.matrix_h, self.matrix_w)

    def _output_shape(self):
        H, W, C = self.image_shape
        if self.method == "avg_pool":
            return (H // self.factor, W // self.factor, C)
        return (self.matrix_h.shape[0], self.matrix_w.shape[0], C)  # ceil(H / f) x ceil(W / f)

    def _apply(self, op_params, x):
        del op_params
        f = self.factor
        H, W, C = self.image_shape
        if self.method == "avg_pool":
            return jnp.mean(x.reshape(H // f, f, W // f, f, C), axis=(1, 3))
        y = jnp.einsum("oh,hwc->owc", jnp.asarray(self.matrix_h, x.dtype), x, precision=_HIGHEST)
        return jnp.einsum("pw,owc->opc", jnp.asarray(self.matrix_w, x.dtype), y, precision=_HIGHEST)
