"""PSNR and SSIM on NHWC batches in [-1, 1], computed on the [0, 1] data range as papers do.

Both reproduce scikit-image 0.26 (`peak_signal_noise_ratio(..., data_range=1.0)` and
`structural_similarity(..., channel_axis=-1, data_range=1.0, ...)`) on images mapped to [0, 1].
The filters are written as explicit shifted sums, not convolutions, so the arithmetic is plain
elementwise float math: no TF32 on GPUs, the same numbers on every device. Computation runs in the
input's float dtype (float32, or float64 under `jax_enable_x64` with float64 inputs).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax


def _check_pair(x, y, what: str):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(
            f"{what}: expected two NHWC batches of the same shape (B, H, W, C), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    return x.astype(dtype), y.astype(dtype)


def _to_unit(x):
    """[-1, 1] -> [0, 1]: the data range every PSNR/SSIM number in the papers uses."""
    return (x + 1.0) * 0.5


@jax.jit
def psnr(x, y):
    """PSNR in dB per image: 10 log10(1 / MSE) on [0, 1] data, the MSE over H, W and C.

    Identical images give +inf, as scikit-image does.
    """
    x, y = _check_pair(x, y, "psnr")
    # (x - y) / 2 is the [0, 1]-range difference without rounding the mapped values first.
    mse = jnp.mean(jnp.square((x - y) * 0.5), axis=(1, 2, 3))
    return 10.0 * jnp.log10(1.0 / mse)


def _gaussian_taps(sigma: float, truncate: float) -> list[float]:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    w = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    total = math.fsum(w)
    return [v / total for v in w]


def _valid_filter(a, taps: list[float]):
    """Separable weighted window mean over H and W, keeping only fully covered pixels.

    scikit-image filters with mode 'reflect' and then crops (win - 1) / 2 pixels on each side, i.e.
    exactly the pixels whose window never reaches the padding, so 'valid' filtering is identical.
    """
    n = len(taps)
    h, w = a.shape[1] - n + 1, a.shape[2] - n + 1
    a = sum(t * a[:, i : i + h] for i, t in enumerate(taps))
    return sum(t * a[:, :, i : i + w] for i, t in enumerate(taps))


@functools.partial(
    jax.jit, static_argnames=("gaussian", "sigma", "truncate", "win_size", "k1", "k2")
)
def ssim(
    x,
    y,
    *,
    gaussian: bool = True,
    sigma: float = 1.5,
    truncate: float = 3.5,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
):
    """Structural similarity per image (mean over the cropped SSIM map, then over channels).

    Default (`gaussian=True`): Wang et al. 2004 as most papers use it, = scikit-image with
    `gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0` (11x11 window,
    population covariance). `gaussian=False`: scikit-image's defaults with `data_range=1.0`
    (`win_size` x `win_size` uniform window, sample covariance NP / (NP - 1)).
    """
    x, y = _check_pair(x, y, "ssim")
    if gaussian:
        taps = _gaussian_taps(sigma, truncate)
        cov_norm = 1.0
    else:
        if win_size < 3 or win_size % 2 == 0:
            raise ValueError(f"ssim: win_size must be odd and >= 3, got {win_size}")
        taps = [1.0 / win_size] * win_size
        cov_norm = win_size**2 / (win_size**2 - 1.0)
    if min(x.shape[1:3]) < len(taps):
        raise ValueError(
            f"ssim: images {tuple(x.shape)} are smaller than the {len(taps)}x{len(taps)} window"
        )
    x, y = _to_unit(x), _to_unit(y)
    ux, uy = _valid_filter(x, taps), _valid_filter(y, taps)
    vx, vy, vxy = (cov_norm * v for v in _local_covariances(x, y, ux, uy, taps))
    c1, c2 = k1**2, k2**2  # data range 1
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3))


def _local_covariances(x, y, ux, uy, taps: list[float]):
    """Windowed var(x), var(y), cov(x, y) by the two-pass formula sum w (x - ux)(y - uy).

    The one-pass E[x^2] - E[x]^2 that scikit-image uses (in float64) loses ~2e-6 of SSIM to
    cancellation in float32 on flat image regions; two passes keep float32 within ~1e-7. Window
    rows are a fori_loop (small program), columns unrolled (fused).
    """
    n = len(taps)
    h, w = ux.shape[1], ux.shape[2]
    row_taps = jnp.asarray(taps, x.dtype)

    def add_row(i, acc):
        xr = lax.dynamic_slice_in_dim(x, i, h, axis=1)
        yr = lax.dynamic_slice_in_dim(y, i, h, axis=1)
        vx = vy = vxy = 0.0
        for j, t in enumerate(taps):
            dx, dy = xr[:, :, j : j + w] - ux, yr[:, :, j : j + w] - uy
            vx, vy, vxy = vx + t * dx * dx, vy + t * dy * dy, vxy + t * dx * dy
        return tuple(a + row_taps[i] * b for a, b in zip(acc, (vx, vy, vxy)))

    zero = jnp.zeros_like(ux)
    return lax.fori_loop(0, n, add_row, (zero, zero, zero))
