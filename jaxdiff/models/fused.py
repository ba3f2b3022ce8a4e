"""UNet ops whose gradient XLA's default transpose makes slow on CPU, with hand-written VJPs.

docs/performance.md has the profile behind each one. In short, for the gradient w.r.t. the input
(DPS differentiates the whole UNet once per step):

- `upsample_nearest2x`: the transpose of broadcast+reshape is a reduce over two strided axes,
  which XLA:CPU runs far slower than the forward; here it is four contiguous slices added.
- `avg_pool2x`: the forward's `mean` is the same strided reduce; here it is slices added in
  PyTorch's order ((x00 + x01) + x10) + x11 then / 4, and its VJP is a broadcast.
- `Conv` (stride 1): inside a `lax.scan` (every sampler's loop) XLA:CPU lowers the transpose of a
  convolution as `convolution(g, reverse(W))` with the kernel's I/O dimensions swapped
  (`dim_labels=b01f_01oi`), which YNNPACK does not take, so it runs XLA's naive loop emitter, 4-6x
  slower than the forward. Here the input gradient is a forward convolution of g with the kernel
  flipped and transposed explicitly (behind an optimization barrier, so XLA cannot fold the
  transpose back into the dimension numbers): the standard HWIO layout YNNPACK runs.
- `group_norm`: GroupNorm with the scale-shift and SiLU that follow it in every ResBlock. Autodiff
  keeps x - mean, the normalised x, the pre-SiLU value and its sigmoid as full-size residuals (four
  activation-sized writes in the forward, four reads in the backward); this VJP keeps x and the
  per-group statistics and recomputes the rest in one pass.

The forward values are computed by the same expressions as the plain ops (`group_norm_reference`
and the autodiff versions below), so outputs and gradients agree to float rounding
(tests/test_models_fused.py). They are on by default on XLA:CPU only (`custom_vjp_enabled`);
`USE_CUSTOM_VJP` or $JAXDIFF_CUSTOM_VJP forces either (A/B timing).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import custom_batching, lax

Dtype = Any

USE_CUSTOM_VJP: bool | None = None
"""Module switch read at trace time: True / False force the hand-written VJPs on / off (the
benchmark's A/B, tests); None chooses by `custom_vjp_enabled()`."""
CUSTOM_VJP_ENV = "JAXDIFF_CUSTOM_VJP"


def custom_vjp_enabled() -> bool:
    """Whether the hand-written VJPs are traced: USE_CUSTOM_VJP when set, else $JAXDIFF_CUSTOM_VJP
    (`on` / `off` / `auto`), else auto: on for XLA:CPU, where they were measured to help (the
    module docstring), off elsewhere. On GPU / TPU XLA's own transposes go to cuDNN and the
    convolution units, and the explicit kernel flip behind an optimization barrier may cost more
    than it saves; until measured there, XLA's own are used."""
    if USE_CUSTOM_VJP is not None:
        return bool(USE_CUSTOM_VJP)
    setting = os.environ.get(CUSTOM_VJP_ENV, "auto").strip().lower()
    if setting in ("1", "on", "true", "yes"):
        return True
    if setting in ("0", "off", "false", "no"):
        return False
    if setting != "auto":
        raise ValueError(f"{CUSTOM_VJP_ENV}={setting!r}: expected on, off or auto")
    return jax.default_backend() == "cpu"


def wide(dtype: Dtype) -> Dtype:
    """float32 for bfloat16/float16/float32 compute, float64 for float64 compute."""
    return jnp.promote_types(dtype, jnp.float32)


def jax_rsqrt(x):
    # 1/sqrt rather than lax.rsqrt: torch divides by sqrt(var + eps); this keeps the rounding close.
    return 1.0 / jnp.sqrt(x)


# ---------------------------------------------------------------------------------------------
# convolution (NHWC, HWIO)

_DN = ("NHWC", "HWIO", "NHWC")


def _conv_plain(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_same(x, w, padding):
    return _conv_plain(x, w, (1, 1), padding)


def _conv_same_fwd(x, w, padding):
    return _conv_plain(x, w, (1, 1), padding), (x, w)


def _conv_same_bwd(padding, res, g):
    x, w = res
    kh, kw = w.shape[:2]
    flipped = lax.optimization_barrier(jnp.flip(_tied(w, g), (0, 1)).swapaxes(2, 3))
    pads = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
            (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))  # fmt: skip
    dx = _conv_plain(g, flipped, (1, 1), pads)
    # dw[kh, kw, i, o] = sum_{n,h,w} x_pad[n, h + kh, w + kw, i] g[n, h, w, o]: one convolution
    # with channels as the batch (a direct call, not jax.vjp's transpose, whose out_sharding
    # makes the grouped convolution of vmap-of-vmap, a sweep of DPS, unbatchable in jax 0.10)
    dw = lax.conv_general_dilated(x, g, (1, 1), padding, dimension_numbers=("CHWN", "IHWO", "HWNC"))
    return dx, dw.astype(w.dtype)


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


@custom_batching.custom_vmap
def _tied(w, g):
    """w plus zero times one element of g: the same values, made to depend on the cotangent.
    Computed from w alone, XLA hoists every layer's flipped kernel out of the sampler's loop
    (or schedules it at the loop's start) and keeps them all alive at once, a second copy of
    the weights in temporary memory; tied to g, each is made at its layer's turn in the
    backward pass and freed after. (An optimization barrier grouping w with g does not do it:
    XLA:CPU removes barriers before scheduling.) The element enters as (g != 0) * 0, zero
    whatever it holds: a NaN or Inf cotangent leaves the kernel finite. Under `vmap` over
    images (g batched, w not) one image's element ties it (`_tied_vmap`)."""
    return w + (g.reshape(-1)[0] != 0).astype(w.dtype) * 0


@_tied.def_vmap
def _tied_vmap(axis_size, in_batched, w, g):
    """The kernel stays one kernel for the batch: tied to the first image's cotangent, not to
    each image's, which would make a kernel per image and the input gradient a grouped
    convolution (3.2x the time per image at batch 4 on XLA:CPU, ffhq256 DPS)."""
    del axis_size
    w_batched, g_batched = in_batched
    return _tied(w, g[0] if g_batched else g), w_batched


def conv2d(x, w, strides=(1, 1), padding=((0, 0), (0, 0))):
    """lax.conv_general_dilated on NHWC/HWIO; stride 1 with the explicit-kernel VJP."""
    strides, padding = tuple(strides), tuple(tuple(p) for p in padding)
    if custom_vjp_enabled() and strides == (1, 1):
        return _conv_same(x, w, padding)
    return _conv_plain(x, w, strides, padding)


class Conv(nn.Module):
    """flax.linen.Conv's parameters ("kernel" HWIO, "bias") and numbers, through `conv2d`."""

    features: int
    kernel_size: tuple
    strides: tuple = (1, 1)
    padding: tuple = ((0, 0), (0, 0))
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        return conv2d(x, kernel, self.strides, self.padding) + bias


# ---------------------------------------------------------------------------------------------
# nearest-neighbour 2x upsampling and 2x2 average pooling (NHWC)


def _upsample_plain(x):
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def _sum2x2(g):
    """Sum of each 2x2 block of (B, 2H, 2W, C), as four contiguous slices: (00 + 01) + (10 + 11)."""
    b, h2, w2, c = g.shape
    g = g.reshape(b, h2 // 2, 2, w2 // 2, 2 * c)
    return (g[:, :, 0, :, :c] + g[:, :, 0, :, c:]) + (g[:, :, 1, :, :c] + g[:, :, 1, :, c:])


@jax.custom_vjp
def _upsample_fused(x):
    return _upsample_plain(x)


def _upsample_fwd(x):
    return _upsample_plain(x), None


def _upsample_bwd(_, g):
    return (_sum2x2(g),)


_upsample_fused.defvjp(_upsample_fwd, _upsample_bwd)


def upsample_nearest2x(x: jnp.ndarray) -> jnp.ndarray:
    """F.interpolate(scale_factor=2, mode='nearest') on NHWC."""
    return _upsample_fused(x) if custom_vjp_enabled() else _upsample_plain(x)


def _avg_pool_plain(x):
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _avg_pool_values(x):
    """PyTorch's avg_pool2d(2) sums the window row by row, then divides by 4."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2 * c)
    s = ((x[:, :, 0, :, :c] + x[:, :, 0, :, c:]) + x[:, :, 1, :, :c]) + x[:, :, 1, :, c:]
    return s / jnp.asarray(4, s.dtype)


@jax.custom_vjp
def _avg_pool_fused(x):
    return _avg_pool_values(x)


def _avg_pool_fwd(x):
    return _avg_pool_values(x), x.shape


def _avg_pool_bwd(shape, g):
    dx = _upsample_plain(g / jnp.asarray(4, g.dtype))
    h, w = shape[1], shape[2]
    if dx.shape[1:3] != (h, w):  # odd sizes: the dropped last row/column gets no gradient
        dx = jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0)))
    return (dx,)


_avg_pool_fused.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def avg_pool2x(x: jnp.ndarray) -> jnp.ndarray:
    """F.avg_pool2d(kernel_size=2, stride=2) on NHWC (odd sizes floor, like PyTorch)."""
    return _avg_pool_fused(x) if custom_vjp_enabled() else _avg_pool_plain(x)


# ---------------------------------------------------------------------------------------------
# GroupNorm (+ scale-shift, + SiLU)


def _stats(cfg, x):
    """x in the statistics dtype, grouped (B, N, G, C/G); the per-group mean and 1/std."""
    groups, eps, dtype, _, _ = cfg
    c = x.shape[-1]
    h = x.astype(wide(dtype)).reshape(x.shape[0], -1, groups, c // groups)
    mean = jnp.mean(h, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=(1, 3), keepdims=True)
    return h, mean, jax_rsqrt(var + eps)


def _after_norm(cfg, xhat, gamma, beta, mod):
    """affine (wide) -> cast to dtype -> * (1 + scale) + shift -> SiLU, in the modules' order."""
    _, _, dtype, silu, has_mod = cfg
    cdt = wide(dtype)
    y = xhat * gamma.astype(cdt) + beta.astype(cdt)
    yd = y.astype(dtype)
    z = yd * (1 + mod[0]) + mod[1] if has_mod else yd
    return yd, z, (jax.nn.silu(z) if silu else z)


def _forward(cfg, x, gamma, beta, mod):
    h, mean, inv = _stats(cfg, x)
    xhat = ((h - mean) * inv).reshape(x.shape)
    return _after_norm(cfg, xhat, gamma, beta, mod)[2], mean, inv


def group_norm_reference(cfg, x, gamma, beta, mod):
    """The plain ops, differentiated by JAX (what `group_norm` must equal)."""
    return _forward(cfg, x, gamma, beta, mod)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _group_norm_fused(cfg, x, gamma, beta, mod):
    return _forward(cfg, x, gamma, beta, mod)[0]


def _gn_fwd(cfg, x, gamma, beta, mod):
    out, mean, inv = _forward(cfg, x, gamma, beta, mod)
    return out, (x, gamma, beta, mod, mean, inv)


def _sum_to(g, shape):
    """Sum a broadcast result's cotangent back to an operand's shape."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return jnp.sum(g, axis=axes).reshape(shape) if axes else g


def _gn_bwd(cfg, res, g):
    groups, _, dtype, silu, has_mod = cfg
    x, gamma, beta, mod, mean, inv = res
    cdt = wide(dtype)
    h = x.astype(cdt).reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    xhat_g = (h - mean) * inv
    xhat = xhat_g.reshape(x.shape)
    yd, z, _ = _after_norm(cfg, xhat, gamma, beta, mod)
    g = g.astype(cdt)
    if silu:  # d silu(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))
        zc = z.astype(cdt)
        s = jax.nn.sigmoid(zc)
        g = g * (s * (1 + zc * (1 - s)))
    d_mod = ()
    if has_mod:
        scale, shift = mod
        d_scale = _sum_to(g * yd.astype(cdt), scale.shape).astype(scale.dtype)
        d_shift = _sum_to(g, shift.shape).astype(shift.dtype)
        d_mod = (d_scale, d_shift)
        g = g * (1 + scale).astype(cdt)
    d_gamma = _sum_to(g * xhat, gamma.shape).astype(gamma.dtype)
    d_beta = _sum_to(g, beta.shape).astype(beta.dtype)
    gx = (g * gamma.astype(cdt)).reshape(h.shape)
    m1 = jnp.mean(gx, axis=(1, 3), keepdims=True)
    m2 = jnp.mean(gx * xhat_g, axis=(1, 3), keepdims=True)
    dx = (inv * (gx - m1 - xhat_g * m2)).reshape(x.shape).astype(x.dtype)
    return dx, d_gamma, d_beta, d_mod


_group_norm_fused.defvjp(_gn_fwd, _gn_bwd)


def group_norm(
    x, gamma, beta, scale_shift=None, num_groups=32, epsilon=1e-5, dtype=jnp.float32, silu=False
):
    """silu?(GN(x) * (1 + scale) + shift): GroupNorm's statistics in `wide(dtype)`, its output cast
    to `dtype`, then the optional scale-shift (`scale_shift=(scale, shift)`, broadcastable to x,
    in `dtype`) and SiLU in `dtype`, as guided-diffusion's ResBlock and diffusers' ResnetBlock2D
    compute them."""
    cfg = (int(num_groups), float(epsilon), jnp.dtype(dtype), bool(silu), scale_shift is not None)
    mod = tuple(scale_shift) if scale_shift is not None else ()
    fn = _group_norm_fused if custom_vjp_enabled() else group_norm_reference
    return fn(cfg, x, gamma, beta, mod)
