"""Layers shared by the ADM and diffusers UNets (NHWC).

Both reference implementations keep a few computations in float32 even when the network runs in
half precision (GroupNorm statistics, the timestep sinusoid, the attention softmax); `wide(dtype)`
is that "float32 or wider" type, so a float64 model stays float64 throughout (for parity checks).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxdiff.models.fused import (  # noqa: F401 - re-exported for the models
    Conv,
    avg_pool2x,
    group_norm,
    jax_rsqrt,
    upsample_nearest2x,
    wide,
)

Dtype = Any


def timestep_embedding(
    t: jnp.ndarray,
    dim: int,
    *,
    flip_sin_to_cos: bool,
    freq_shift: float,
    max_period: float = 10000.0,
    dtype: Dtype = jnp.float32,
) -> jnp.ndarray:
    """Sinusoidal embedding (B,) -> (B, dim), in the op order of both references.

    ADM (nn.py timestep_embedding) is `flip_sin_to_cos=True, freq_shift=0` ([cos, sin], /half);
    google/ddpm (diffusers get_timestep_embedding) is `False, 1` ([sin, cos], /(half - 1)).
    `dtype` is the precision of the frequencies and the product (float32 in both references).
    """
    half = dim // 2
    args = t.astype(dtype)[:, None] * jnp.asarray(_frequencies(half, freq_shift, max_period, dtype))
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def _frequencies(half: int, freq_shift: float, max_period: float, dtype) -> np.ndarray:
    """exp(-ln(max_period) * i / (half - shift)) as a constant: the exponent in `dtype` in the
    reference's op order, the exp correctly rounded (float64, then rounded to `dtype`), which is
    what torch's float32 exp returns where XLA's may be one ulp off (1 ulp here = ~5e-5 rad of
    phase at t = 999)."""
    dtype = np.dtype(dtype)
    exponent = dtype.type(-math.log(max_period)) * np.arange(half, dtype=dtype)
    exponent = exponent / dtype.type(half - freq_shift)
    return np.exp(exponent.astype(np.float64)).astype(dtype)


def batch_timesteps(t, batch: int) -> jnp.ndarray:
    """A scalar or (B,) timestep -> (B,), so one call serves a whole batch at one step."""
    t = jnp.asarray(t)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"timesteps must be a scalar or shape ({batch},), got shape {t.shape}")
    return jnp.broadcast_to(t.reshape(-1) if t.ndim else t, (batch,))


class GroupNorm(nn.Module):
    """GroupNorm over (spatial..., channels-in-group) per sample, statistics in float32 or wider.

    Matches torch.nn.GroupNorm (biased variance, affine `scale`/`bias` per channel). Accepts any
    (B, ..., C) input, so attention blocks can normalise token sequences too. The output is cast
    to `dtype`, like guided-diffusion's GroupNorm32 casts back to the input type.

    `__call__(x, scale_shift=None, silu=False)` also applies what every ResBlock does next,
    `silu(GN(x) * (1 + scale) + shift)`, as one op with a hand-written VJP (`group_norm`): the
    numbers are those of the separate ops, and the gradient keeps only x and the statistics.
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, scale_shift=None, silu: bool = False) -> jnp.ndarray:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(
                f"GroupNorm {self.name}: {c} channels are not divisible by {self.num_groups} groups"
            )
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        return group_norm(
            x, scale, bias, scale_shift, self.num_groups, self.epsilon, self.dtype, silu=silu
        )


# PyTorch's default Conv/Linear weight init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)).
# Only matters when training from scratch; converted checkpoints overwrite every parameter.
TORCH_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _init(zero: bool):
    # guided-diffusion's zero_module() layers start at exactly zero.
    return nn.initializers.zeros if zero else TORCH_INIT


def conv3x3(
    features: int, name: str, dtype: Dtype, param_dtype: Dtype, stride: int = 1, zero=False
) -> Conv:
    """3x3 conv with PyTorch's padding=1 on every side (Flax 'SAME' pads (0, 1) at stride 2)."""
    return Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_init(zero),
        name=name,
    )


def conv1x1(features: int, name: str, dtype: Dtype, param_dtype: Dtype) -> Conv:
    return Conv(
        features,
        (1, 1),
        padding=((0, 0), (0, 0)),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=TORCH_INIT,
        name=name,
    )


def dense(features: int, name: str, dtype: Dtype, param_dtype: Dtype, zero=False) -> nn.Dense:
    """Linear / 1x1 Conv1d on the last axis."""
    return nn.Dense(
        features, dtype=dtype, param_dtype=param_dtype, kernel_init=_init(zero), name=name
    )


def attention(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, scale: float | None = None
) -> jnp.ndarray:
    """Softmax attention over tokens: q, k, v (B, T, heads, d) -> (B, T, heads, d).

    Scores are multiplied by `scale` if given (callers that pre-scale q and k pass None); the
    softmax runs in float32 or wider and its weights are cast back to the compute dtype, as in
    guided-diffusion's QKVAttention and diffusers' upcast_softmax.
    """
    dtype = q.dtype
    w = jnp.einsum("bthd,bshd->bhts", q, k)
    if scale is not None:
        w = w * jnp.asarray(scale, w.dtype)
    w = nn.softmax(w.astype(wide(dtype)), axis=-1).astype(dtype)
    return jnp.einsum("bhts,bshd->bthd", w, v)
