"""Random motion-blur kernels in JAX, after LeviBorodenko/motionblur `Kernel` (MB: motionblur.py).

The reference draws a camera-shake path with numpy's global RNG and rasterises it with PIL, so its
kernels cannot be reproduced bitwise from a JAX key (the DPS fixtures store the kernel instead).
This module keeps the construction step for step, with static shapes so it jits and vmaps:

1. Path (canvas 2*size square, diagonal D): max length L = 0.75 D (U(0,1) + U(0, I^2)); steps
   beta(1, 30) (1 - I + 0.1) D, rejected when >= L, appended until their sum reaches L (sampled
   here from the truncated beta by inverse CDF, `max_steps` of them, the unused ones masked out);
   max angle U(0, I pi), jitter beta(2, 20); first angle U(-max, max), then |angle| ~
   triangular(0, I max, max + 0.1) with the previous sign flipped with probability jitter; path =
   cumsum(step e^{i angle}), centred on its mean, rotated by U(0, pi), moved to the canvas centre.
2. Render (kernel sizes <= 106, where MB's line is 1 px wide): a 1-px line through the points
   (coordinates truncated like PIL's `(int)` cast, Bresenham between them), PIL's
   GaussianBlur(radius = int(D/100)) as its 3-pass extended box blur in its fixed point, PIL's
   LANCZOS resize to `size` (horizontal then vertical, fixed point), each stage uint8 like PIL,
   then normalised to sum 1 (the reference's `kernelMatrix`). Given the same path this equals the
   reference kernel to float32 rounding (tests/test_operators_parity.py).

`render_motion_kernel` takes a path, so the renderer can be checked against PIL on the same path.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 0.1  # MB's "tiny error used for numerical stability"


def _canvas(size: int) -> tuple[int, float]:
    big = 2 * size
    return big, math.sqrt(2.0 * big * big)


def max_path_points(size: int, intensity: float) -> int:
    """A static bound on the number of path points: 3x the largest expected count, plus slack."""
    _, diag = _canvas(size)
    mean_step = (1 - intensity + _EPS) * diag / 31.0  # beta(1, 30) has mean 1/31
    longest = 0.75 * diag * (1 + intensity**2)
    return int(math.ceil(3 * longest / mean_step)) + 32


def motion_path(key, size: int, intensity: float, max_steps: int | None = None):
    """Draw a path: (points (max_steps,) complex64 in canvas pixels (x + iy), n_valid int32)."""
    big, diag = _canvas(size)
    m = max_path_points(size, intensity) if max_steps is None else int(max_steps)
    # All uniforms in one draw (one threefry call keeps the compile short), sliced in MB's order.
    draws = jax.random.uniform(key, (3 * m + 25,))
    scalars, steps_u, angle_u, flip_u = (
        draws[:27],
        draws[27 : 27 + m],
        draws[27 + m : 26 + 2 * m],
        draws[26 + 2 * m : 25 + 3 * m],
    )
    max_len = 0.75 * diag * (scalars[0] + scalars[1] * intensity**2)
    step_scale = (1 - intensity + _EPS) * diag
    # beta(1, 30) truncated to step < max_len: CDF F(b) = 1 - (1 - b)^30, inverted.
    cut = jnp.minimum(max_len / step_scale, 1.0)
    f_cut = 1.0 - (1.0 - cut) ** 30
    steps = (1.0 - (1.0 - steps_u * f_cut) ** (1.0 / 30.0)) * step_scale
    before = jnp.cumsum(steps) - steps
    valid = before < max_len  # a step is taken while the sum so far is below max_len
    n = jnp.sum(valid).astype(jnp.int32)

    max_angle = scalars[2] * intensity * math.pi
    # beta(2, 20) = G2 / (G2 + G20), Gamma(n) a sum of n unit exponentials (jax.random.beta's
    # rejection sampler takes ~10 s to compile on CPU)
    expo = -jnp.log1p(-scalars[3:25])
    jitter = jnp.sum(expo[:2]) / jnp.sum(expo)
    first = (2.0 * scalars[25] - 1.0) * max_angle
    # triangular(0, mode=c, right=b) by inverse CDF
    c, b = intensity * max_angle, max_angle + _EPS
    mag = jnp.where(
        angle_u < c / b, jnp.sqrt(angle_u * b * c), b - jnp.sqrt((1.0 - angle_u) * b * (b - c))
    )
    flip = jnp.where(flip_u < jitter, -1.0, 1.0)
    signs = jnp.sign(first) * jnp.cumprod(flip)
    angles = jnp.concatenate([first[None], mag * signs])

    path = jnp.cumsum(steps * jnp.exp(1j * angles))
    com = jnp.sum(jnp.where(valid, path, 0.0)) / n
    path = (path - com) * jnp.exp(1j * scalars[26] * math.pi)
    path = path + (big + 1j * big) / 2
    return path.astype(jnp.complex64), n


def _pil_box_radius(radius: float, passes: int = 3) -> float:
    """Pillow BoxBlur.c `ImagingGaussianBlur`: the extended-box radius of a Gaussian blur."""
    sigma2 = radius * radius / passes
    big_l = math.sqrt(12.0 * sigma2 + 1.0)
    small_l = math.floor((big_l - 1.0) / 2.0)
    a = (2 * small_l + 1) * (small_l * (small_l + 1) - 3 * sigma2)
    a /= 6 * (sigma2 - (small_l + 1) ** 2)
    return small_l + a


def _box_pass(x, radius: float):
    """One Pillow extended-box pass along the last axis of uint32 pixels, in its fixed point.

    Pillow `ImagingHorizontalBoxBlur`: inner taps weigh ww = 2^24 / (2r + 1), the two outer taps
    fw, edge pixels are repeated, and the sum is rounded back to uint8.
    """
    n = x.shape[-1]
    whole = int(radius)
    ww = int(np.float32(1 << 24) / np.float32(radius * 2 + 1))
    fw = ((1 << 24) - (whole * 2 + 1) * ww) // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(whole + 1, whole + 1)]
    xp = jnp.pad(x, pad, mode="edge")
    inner = sum(xp[..., t : t + n] for t in range(1, 2 * whole + 2))
    outer = xp[..., :n] + xp[..., 2 * whole + 2 :]
    bulk = inner * np.uint32(ww) + outer * np.uint32(fw) + np.uint32(1 << 23)
    return bulk >> np.uint32(24)


def _lanczos_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow Resample.c LANCZOS (a = 3) coefficients: (n_out, taps) indices and int32 weights."""

    def lanczos(x):
        return np.where((x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3.0), 0.0)

    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 3.0 * fscale
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((n_out, taps), np.int32)
    weight = np.zeros((n_out, taps), np.int32)
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        w = lanczos((np.arange(lo, hi) - centre + 0.5) / fscale)
        w = w / w.sum()
        # normalize_coeffs_8bpc: round half away from zero to 22 fractional bits
        w_int = np.where(w < 0, -0.5 + w * (1 << 22), 0.5 + w * (1 << 22)).astype(np.int64)
        index[o, : hi - lo] = np.arange(lo, hi)
        weight[o, : hi - lo] = w_int
    return index, weight


def _resample_pass(x, index: np.ndarray, weight: np.ndarray):
    """One Pillow 8-bit resample pass along the last axis (int32 fixed point, clipped to uint8)."""
    acc = jnp.sum(x[..., index].astype(jnp.int32) * weight, axis=-1) + (1 << 21)
    return jnp.clip(acc >> 22, 0, 255).astype(jnp.uint32)


def check_motion_kernel_size(size: int) -> None:
    """Sizes this renderer supports (MB's line is 1 px wide up to 106; wider is not implemented)."""
    _, diag = _canvas(size)
    if size < 1 or int(diag / 150) > 1:
        raise ValueError(
            f"motion kernel size {size}: MB would draw a {int(diag / 150)}-px line; only "
            "1-px lines (kernel size <= 106) are implemented"
        )


def render_motion_kernel(path, n_valid, size: int):
    """Rasterise a path like MB's PIL pipeline; returns the (size, size) float32 kernel, sum 1.

    `path` is (M,) complex canvas coordinates x + iy of which the first `n_valid` are used.
    """
    big, diag = _canvas(size)
    # MB draws width int(D / 150) with D = 2 sqrt(2) size: 1 px for sizes 54..106. Below 54 PIL
    # draws nothing (width 0) and MB returns NaN; a 1-px line is drawn here instead. Wider lines
    # (size > 106) are not implemented.
    check_motion_kernel_size(size)
    # PIL: (int) casts of the vertices, then Bresenham between consecutive ones (every pixel of
    # segment k is start + sign(d) * floor(|d| t / L + 1/2), t = 0..L, L = max |d|).
    pts = jnp.trunc(jnp.stack([jnp.real(path), jnp.imag(path)], -1)).astype(jnp.int32)
    start, end = pts[:-1], pts[1:]
    seg_ok = jnp.arange(pts.shape[0] - 1) + 1 < n_valid
    delta = end - start
    length = jnp.maximum(jnp.max(jnp.abs(delta), axis=-1), 1)[:, None, None]
    # steps are shorter than the max path length 0.75 D (1 + I^2) <= 1.5 D
    t = jnp.arange(int(math.ceil(1.5 * diag)) + 2)[None, :, None]
    mag = jnp.abs(delta)[:, None, :]
    offset = jnp.sign(delta)[:, None, :] * ((2 * mag * t + length) // (2 * length))
    xy = start[:, None, :] + offset
    ok = seg_ok[:, None] & (t[..., 0] <= jnp.max(jnp.abs(delta), axis=-1)[:, None])
    ok = ok & jnp.all((xy >= 0) & (xy < big), axis=-1)
    rows = jnp.where(ok, xy[..., 1], big).reshape(-1)
    cols = jnp.where(ok, xy[..., 0], big).reshape(-1)
    canvas = jnp.zeros((big, big), jnp.uint32).at[rows, cols].set(255, mode="drop")

    radius = _pil_box_radius(float(int(diag * 0.01)))
    for _ in range(3):  # Pillow ImagingBoxBlur: three horizontal passes, then three vertical
        canvas = _box_pass(canvas, radius)
    canvas = canvas.T
    for _ in range(3):
        canvas = _box_pass(canvas, radius)
    canvas = canvas.T
    index, weight = _lanczos_table(big, size)
    small = _resample_pass(canvas, index, weight)  # horizontal first, like Pillow
    small = _resample_pass(small.T, index, weight).T
    small = small.astype(jnp.float32)
    total = jnp.sum(small)
    return jnp.where(total > 0, small / jnp.where(total > 0, total, 1.0), 0.0)


def motion_kernel(key, size: int, intensity: float):
    """One random (size, size) motion-blur kernel of the given intensity in [0, 1]."""
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion_blur: intensity must be in [0, 1], got {intensity}")
    path, n = motion_path(key, size, intensity)
    return render_motion_kernel(path, n, size)
