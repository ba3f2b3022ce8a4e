"""The latent-diffusion first stages, diffusers' `AutoencoderKL` and `VQModel`, in Flax (NHWC).

Both are built from their `config.json` (every size read from it) and are plain functions of
their parameters, so `jax.grad` goes through the decoder and the encoder. Methods, called as
`model.apply({"params": p}, x, method=NAME)` on (B, H, W, C) images in [-1, 1]:

- `encode`: AutoencoderKL -> (mean, logvar), logvar clamped to [-30, 20] as diffusers'
  DiagonalGaussianDistribution; VQModel -> the latents h before quantization.
- `decode`: latents -> image; VQModel quantizes first, as diffusers' `decode` does by default.
- `vector_quantize` (VQModel): h -> (z_q, indices (B, h, w)): the nearest codebook vector in
  squared L2, z_q = h + stop_gradient(e - h), the reference's straight-through value/gradient.
- `encode_latents` (optional `key` for a posterior sample) / `decode_latents`: the diffusion
  model's latents, (z - shift_factor) * scaling_factor, both factors from the config.

Module names mirror the state-dict keys ("." written "_"), as in the UNets.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import GroupNorm, conv1x1, conv3x3, wide
from jaxdiff.models.unet2d import Attention, Downsample2D, Upsample2D

Dtype = Any

EPS = 1e-6  # every GroupNorm of diffusers' Encoder / Decoder
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp

_COMMON = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "force_upcast": True,  # half-precision advice for the pipeline; the numbers ignore it
    "mid_block_add_attention": True,
}
# AutoencoderKL.__init__ / VQModel.__init__ defaults (diffusers models/autoencoders/).
KL_DEFAULTS = {
    **_COMMON,
    "latent_channels": 4,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}
VQ_DEFAULTS = {
    **_COMMON,
    "latent_channels": 3,
    "num_vq_embeddings": 256,
    "vq_embed_dim": None,
    "norm_type": "group",
    "lookup_from_codebook": False,
    "force_upcast": False,
}


def _check(ok: bool, what: str, field: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"{what} config: {field}={value!r} is not supported ({why})")


def _normalize(config: dict, class_name: str, defaults: dict) -> dict:
    name = config.get("_class_name", class_name)
    if name != class_name:
        raise ValueError(f"{class_name} config: _class_name={name!r}, not {class_name}")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in defaults)
    if unknown:
        raise ValueError(f"{class_name} config: unknown field(s) {unknown}")
    cfg = {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[key] = tuple(cfg[key])
    if isinstance(cfg["sample_size"], list):
        cfg["sample_size"] = tuple(cfg["sample_size"])
    n = len(cfg["block_out_channels"])
    boc = cfg["block_out_channels"]
    _check(n >= 1, class_name, "block_out_channels", boc, "empty")
    blocks = (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D"))
    for key, block in blocks:
        _check(len(cfg[key]) == n, class_name, key, cfg[key], f"needs {n} entries")
        for kind in cfg[key]:
            _check(kind == block, class_name, key, kind, f"only {block}")
    _check(cfg["act_fn"] in ("silu", "swish"), class_name, "act_fn", cfg["act_fn"], "only silu")
    lpb = cfg["layers_per_block"]
    _check(isinstance(lpb, int) and lpb >= 1, class_name, "layers_per_block", lpb, "an int >= 1")
    groups = cfg["norm_num_groups"]
    for c in boc:
        _check(c % groups == 0, class_name, "norm_num_groups", groups, f"must divide {c}")
    return cfg


def normalize_kl_config(config: dict) -> dict:
    cfg = _normalize(config, "AutoencoderKL", KL_DEFAULTS)
    return cfg


def normalize_vq_config(config: dict) -> dict:
    cfg = _normalize(config, "VQModel", VQ_DEFAULTS)
    _check(cfg["norm_type"] == "group", "VQModel", "norm_type", cfg["norm_type"], "only group")
    cfg["vq_embed_dim"] = cfg["vq_embed_dim"] or cfg["latent_channels"]
    return cfg


class ResnetBlock(nn.Module):
    """diffusers ResnetBlock2D without a time embedding (temb_channels=None)."""

    out_channels: int
    groups: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dt, pdt, out = self.dtype, self.param_dtype, self.out_channels
        gn = dict(num_groups=self.groups, epsilon=EPS, dtype=dt, param_dtype=pdt)
        h = conv3x3(out, "conv1", dt, pdt)(GroupNorm(**gn, name="norm1")(x, silu=True))
        h = conv3x3(out, "conv2", dt, pdt)(GroupNorm(**gn, name="norm2")(h, silu=True))
        if x.shape[-1] != out:
            x = conv1x1(out, "conv_shortcut", dt, pdt)(x)
        return x + h


class MidBlock(nn.Module):
    """UNetMidBlock2D without time embedding: resnet, one-head attention (optional), resnet."""

    groups: int
    attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        c, dt, pdt = h.shape[-1], self.dtype, self.param_dtype
        h = ResnetBlock(c, self.groups, dt, pdt, name="resnets_0")(h)
        if self.attention:
            h = Attention(c, self.groups, EPS, 1.0, dt, pdt, name="attentions_0")(h)
        return ResnetBlock(c, self.groups, dt, pdt, name="resnets_1")(h)


class DownEncoderBlock(nn.Module):
    out_channels: int
    groups: int
    layers: int
    add_downsample: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        dt, pdt = self.dtype, self.param_dtype
        for j in range(self.layers):
            h = ResnetBlock(self.out_channels, self.groups, dt, pdt, name=f"resnets_{j}")(h)
        if self.add_downsample:  # diffusers pads right/bottom by one, stride-2 conv, no padding
            h = Downsample2D(0, dt, pdt, name="downsamplers_0")(h)
        return h


class UpDecoderBlock(nn.Module):
    out_channels: int
    groups: int
    layers: int
    add_upsample: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        dt, pdt = self.dtype, self.param_dtype
        for j in range(self.layers):
            h = ResnetBlock(self.out_channels, self.groups, dt, pdt, name=f"resnets_{j}")(h)
        if self.add_upsample:
            h = Upsample2D(dt, pdt, name="upsamplers_0")(h)
        return h


class Encoder(nn.Module):
    config: tuple
    out_channels: int  # 2 * latent_channels for the KL (mean and logvar), latent_channels for VQ
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = dict(self.config)
        dt, pdt, boc = self.dtype, self.param_dtype, cfg["block_out_channels"]
        g, n = cfg["norm_num_groups"], cfg["layers_per_block"]
        h = conv3x3(boc[0], "conv_in", dt, pdt)(x.astype(dt))
        for i, ch in enumerate(boc):
            last = i == len(boc) - 1
            h = DownEncoderBlock(ch, g, n, not last, dt, pdt, name=f"down_blocks_{i}")(h)
        h = MidBlock(g, cfg["mid_block_add_attention"], dt, pdt, name="mid_block")(h)
        h = GroupNorm(g, EPS, dt, pdt, name="conv_norm_out")(h, silu=True)
        return conv3x3(self.out_channels, "conv_out", dt, pdt)(h)


class Decoder(nn.Module):
    config: tuple
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        cfg = dict(self.config)
        dt, pdt, boc = self.dtype, self.param_dtype, cfg["block_out_channels"]
        g, n = cfg["norm_num_groups"], cfg["layers_per_block"] + 1
        h = conv3x3(boc[-1], "conv_in", dt, pdt)(z.astype(dt))
        h = MidBlock(g, cfg["mid_block_add_attention"], dt, pdt, name="mid_block")(h)
        for i, ch in enumerate(reversed(boc)):
            last = i == len(boc) - 1
            h = UpDecoderBlock(ch, g, n, not last, dt, pdt, name=f"up_blocks_{i}")(h)
        h = GroupNorm(g, EPS, dt, pdt, name="conv_norm_out")(h, silu=True)
        return conv3x3(cfg["out_channels"], "conv_out", dt, pdt)(h)


class _FirstStage(nn.Module):
    """What both first stages share: the latent scaling and the `__call__` that `init` traces."""

    config: tuple
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def scaling_factor(self) -> float:
        return float(dict(self.config)["scaling_factor"])

    @property
    def shift_factor(self) -> float:
        return float(dict(self.config).get("shift_factor") or 0.0)

    def decode_latents(self, z):
        """The diffusion model's latents -> image: decode(z / scaling_factor + shift_factor)."""
        z = z / jnp.asarray(self.scaling_factor, z.dtype) + jnp.asarray(self.shift_factor, z.dtype)
        return self.decode(z)

    def __call__(self, x, t=None, y=None):
        """Reconstruction, decode(encode(x)) (the mean for the KL); `t` and `y` exist only for the
        registry's shared `init(key, x, t, y)` signature and must be None."""
        if t is not None or y is not None:
            raise ValueError(f"{type(self).__name__} takes no timestep or label")
        h = self.encode(x)
        return self.decode(h[0] if isinstance(h, tuple) else h)


class AutoencoderKL(_FirstStage):
    def setup(self):
        cfg = dict(self.config)
        dt, pdt, lc = self.dtype, self.param_dtype, cfg["latent_channels"]
        self.encoder = Encoder(self.config, 2 * lc, dt, pdt)
        self.decoder = Decoder(self.config, dt, pdt)
        self.quant_conv = conv1x1(2 * lc, None, dt, pdt) if cfg["use_quant_conv"] else None
        pqc = cfg["use_post_quant_conv"]
        self.post_quant_conv = conv1x1(lc, None, dt, pdt) if pqc else None

    def encode(self, x):
        """(B, H, W, C) image -> (mean, logvar), each (B, h, w, latent_channels)."""
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode_latents(self, x, key=None):
        """The diffusion model's latents: (mean, or a posterior sample with `key`, - shift) *
        scaling_factor."""
        mean, logvar = self.encode(x)
        z = mean
        if key is not None:
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return (z - self.shift_factor) * jnp.asarray(self.scaling_factor, z.dtype)


class VQModel(_FirstStage):
    def setup(self):
        cfg = dict(self.config)
        dt, pdt = self.dtype, self.param_dtype
        lc, ed = cfg["latent_channels"], cfg["vq_embed_dim"]
        self.encoder = Encoder(self.config, lc, dt, pdt)
        self.decoder = Decoder(self.config, dt, pdt)
        self.quant_conv = conv1x1(ed, None, dt, pdt)
        self.post_quant_conv = conv1x1(lc, None, dt, pdt)
        self.quantize = Codebook(cfg["num_vq_embeddings"], ed, dt, pdt)

    def encode(self, x):
        """(B, H, W, C) image -> the latents h before quantization (encoder + quant_conv)."""
        return self.quant_conv(self.encoder(x))

    def vector_quantize(self, h):
        """diffusers' `VQModel.quantize`: (z_q, indices (B, h, w)) (the submodule `quantize`
        holds the codebook, so the method has this name)."""
        return self.quantize(h)

    def decode(self, h, force_not_quantize: bool = False):
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def encode_latents(self, x, key=None):
        """The diffusion model's latents: (h - shift) * scaling_factor (no sampling: `key`
        is accepted for the KL's signature and ignored)."""
        h = self.encode(x)
        return (h - self.shift_factor) * jnp.asarray(self.scaling_factor, h.dtype)


class Codebook(nn.Module):
    """diffusers VectorQuantizer (legacy, no remap): nearest of `num` vectors of width `dim`."""

    num: int
    dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        table = nn.Embed(self.num, self.dim, param_dtype=self.param_dtype, name="embedding")
        e = table.embedding.astype(wide(self.dtype))
        z = h.astype(e.dtype)
        # |z|^2 - 2 z.e + |e|^2, the expansion torch.cdist uses at these sizes, in full precision
        dots = jnp.einsum("bhwc,kc->bhwk", z, e, precision=jax.lax.Precision.HIGHEST)
        d = jnp.sum(z * z, -1, keepdims=True) - 2 * dots + jnp.sum(e * e, -1)
        indices = jnp.argmin(d, axis=-1).astype(jnp.int32)
        zq = jnp.take(e, indices, axis=0)
        zq = z + jax.lax.stop_gradient(zq - z)  # the reference's straight-through estimator
        return zq.astype(h.dtype), indices


def build_kl(model_config: dict, dtype: Dtype = jnp.float32) -> AutoencoderKL:
    cfg = normalize_kl_config(model_config)
    return AutoencoderKL(tuple(sorted(cfg.items())), dtype=dtype)


def build_vq(model_config: dict, dtype: Dtype = jnp.float32) -> VQModel:
    cfg = normalize_vq_config(model_config)
    return VQModel(tuple(sorted(cfg.items())), dtype=dtype)


def _example(cfg: dict, batch: int = 1):
    s = 2 ** (len(cfg["block_out_channels"]) - 1)
    return jax.ShapeDtypeStruct((batch, s, s, cfg["in_channels"]), jnp.float32), None, None


class _Entry:
    """A registry entry (build, normalize_config, example_inputs), one per first-stage class."""

    def __init__(self, build, normalize):
        self.build, self.normalize_config = build, normalize

    def example_inputs(self, model_config: dict, batch: int = 1):
        return _example(self.normalize_config(model_config), batch)


KL = _Entry(build_kl, normalize_kl_config)
VQ = _Entry(build_vq, normalize_vq_config)
