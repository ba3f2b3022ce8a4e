"""diffusers' `Transformer2DModel` as Stable Diffusion's UNet uses it, in Flax linen (NHWC).

GroupNorm (eps 1e-6) -> proj_in (1x1 conv, or linear on tokens with `use_linear_projection`) ->
`BasicTransformerBlock`s (LayerNorm + self-attention, LayerNorm + cross-attention on the text
context, LayerNorm + GEGLU feed-forward, each residual) -> proj_out -> + input. Module names
mirror the state-dict keys ("." written "_"), so the converter is a rename plus layouts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import TORCH_INIT, GroupNorm, attention, conv1x1, dense

Dtype = Any

GROUP_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm, whatever the UNet's norm_eps
LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's norm_eps default


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
    """torch.nn.LayerNorm: statistics in float32 or wider, variance as mean((x - mean)^2)."""
    return nn.LayerNorm(
        epsilon=LAYER_NORM_EPS,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        name=name,
    )


class CrossAttention(nn.Module):
    """diffusers `Attention` on token sequences: q from x, k/v from `context` (x itself when
    None), `heads` heads of width dim // heads, no q/k/v bias, `to_out.0` with bias."""

    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        b, n, dim = x.shape
        context = x if context is None else context.astype(self.dtype)
        head_dim = dim // self.heads

        def proj(name, src):
            y = nn.Dense(
                dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=TORCH_INIT, name=name,
            )(src)  # fmt: skip
            return y.reshape(b, src.shape[1], self.heads, head_dim)

        q, k, v = proj("to_q", x), proj("to_k", context), proj("to_v", context)
        a = attention(q, k, v, scale=head_dim**-0.5).reshape(b, n, dim)
        return dense(dim, "to_out_0", self.dtype, self.param_dtype)(a)


class GEGLU(nn.Module):
    """`net.0`: proj to 2 * inner, then hidden * gelu(gate) (exact erf GELU, as F.gelu)."""

    inner: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = dense(2 * self.inner, "proj", self.dtype, self.param_dtype)(x)
        hidden, gate = jnp.split(h, 2, axis=-1)
        return hidden * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    mult: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        h = GEGLU(self.mult * dim, self.dtype, self.param_dtype, name="net_0")(x)
        return dense(dim, "net_2", self.dtype, self.param_dtype)(h)


class BasicTransformerBlock(nn.Module):
    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        dt, pdt = self.dtype, self.param_dtype
        x = x + CrossAttention(self.heads, dt, pdt, name="attn1")(layer_norm("norm1", dt, pdt)(x))
        h = layer_norm("norm2", dt, pdt)(x)
        x = x + CrossAttention(self.heads, dt, pdt, name="attn2")(h, context)
        return x + FeedForward(4, dt, pdt, name="ff")(layer_norm("norm3", dt, pdt)(x))


class Transformer2D(nn.Module):
    """(B, H, W, C) image, (B, T, D) context -> (B, H, W, C)."""

    heads: int
    num_layers: int
    groups: int
    linear_projection: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, hh, ww, c = x.shape
        dt, pdt = self.dtype, self.param_dtype
        h = GroupNorm(self.groups, GROUP_NORM_EPS, dt, pdt, name="norm")(x)
        if self.linear_projection:
            h = dense(c, "proj_in", dt, pdt)(h.reshape(b, hh * ww, c))
        else:
            h = conv1x1(c, "proj_in", dt, pdt)(h).reshape(b, hh * ww, c)
        for j in range(self.num_layers):
            block = BasicTransformerBlock(self.heads, dt, pdt, name=f"transformer_blocks_{j}")
            h = block(h, context)
        if self.linear_projection:
            h = dense(c, "proj_out", dt, pdt)(h).reshape(b, hh, ww, c)
        else:
            h = conv1x1(c, "proj_out", dt, pdt)(h.reshape(b, hh, ww, c))
        return h + x


__all__ = ["BasicTransformerBlock", "CrossAttention", "Transformer2D"]
