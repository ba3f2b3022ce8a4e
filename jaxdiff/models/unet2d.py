"""diffusers' `UNet2DModel` in Flax linen, NHWC (the google/ddpm-* architecture and relatives).

`model_config` is the diffusers `config.json` (missing fields take diffusers' defaults). Module
names mirror the state-dict keys with "." written "_" (`down_blocks_1/attentions_0/to_out_0`), so
`jaxdiff/convert/unet2d.py` is a rename plus layout transposes. Supported blocks: DownBlock2D,
AttnDownBlock2D, UpBlock2D, AttnUpBlock2D, UNetMidBlock2D; anything else raises naming the field.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.models import remat
from jaxdiff.models.layers import (
    TORCH_INIT,
    GroupNorm,
    attention,
    batch_timesteps,
    conv1x1,
    conv3x3,
    dense,
    timestep_embedding,
    upsample_nearest2x,
    wide,
)

Dtype = Any

# UNet2DModel.__init__ defaults (diffusers models/unets/unet_2d.py).
DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # name -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}


def _check(ok: bool, field: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"unet2d config: {field}={value!r} is not supported ({why})")


def level_config(config: dict, defaults: dict, down_blocks, up_blocks, what: str, extra=()) -> dict:
    """What the diffusers UNets' configs share: unknown fields refused (`extra` are derived
    ones a normalised config may carry), defaults filled, one known down and up block type per
    entry of block_out_channels; lists as tuples. Errors are prefixed `WHAT config:`."""

    def check(ok: bool, field: str, value, why: str) -> None:
        if not ok:
            raise ValueError(f"{what} config: {field}={value!r} is not supported ({why})")

    known = set(defaults) | set(extra)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"{what} config: unknown field(s) {unknown}")
    cfg = {**defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}
    for key in ("down_block_types", "up_block_types", "block_out_channels"):
        cfg[key] = tuple(cfg[key])
    if isinstance(cfg["sample_size"], list):
        cfg["sample_size"] = tuple(cfg["sample_size"])
    n = len(cfg["block_out_channels"])
    check(n >= 1, "block_out_channels", cfg["block_out_channels"], "empty")
    for key in ("down_block_types", "up_block_types"):
        check(len(cfg[key]) == n, key, cfg[key], f"needs {n} entries like block_out_channels")
    for name in cfg["down_block_types"]:
        check(name in down_blocks, "down_block_types", name, f"known: {sorted(down_blocks)}")
    for name in cfg["up_block_types"]:
        check(name in up_blocks, "up_block_types", name, f"known: {sorted(up_blocks)}")
    return cfg


def normalize_config(config: dict) -> dict:
    """diffusers config.json -> validated dict with defaults filled (tuples, hashable)."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"unet2d config: _class_name={config['_class_name']!r}, not UNet2DModel")
    cfg = level_config(config, DEFAULTS, DOWN_BLOCKS, UP_BLOCKS, "unet2d")
    mid = cfg["mid_block_type"]
    _check(mid in ("UNetMidBlock2D", None), "mid_block_type", mid, "only UNetMidBlock2D or null")
    tet = cfg["time_embedding_type"]
    _check(tet == "positional", "time_embedding_type", tet, "only positional")
    _check(cfg["act_fn"] in ("silu", "swish"), "act_fn", cfg["act_fn"], "only silu")
    for key in ("downsample_type", "upsample_type"):
        _check(cfg[key] == "conv", key, cfg[key], "only conv")
    shift = cfg["resnet_time_scale_shift"]
    _check(shift in ("default", "scale_shift"), "resnet_time_scale_shift", shift, "")
    _check(cfg["class_embed_type"] is None, "class_embed_type", cfg["class_embed_type"], "")
    groups = cfg["norm_num_groups"]
    _check(isinstance(groups, int) and groups > 0, "norm_num_groups", groups, "needs an int")
    for c in cfg["block_out_channels"]:
        _check(c % groups == 0, "norm_num_groups", groups, f"must divide channels {c}")
        hd = cfg["attention_head_dim"]
        if hd is not None:
            _check(c % hd == 0, "attention_head_dim", hd, f"must divide channels {c}")
    return cfg


class TimestepEmbedding(nn.Module):
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dt, pdt = self.dtype, self.param_dtype
        x = nn.silu(dense(self.features, "linear_1", dt, pdt)(x))
        return dense(self.features, "linear_2", dt, pdt)(x)


class ResnetBlock2D(nn.Module):
    out_channels: int
    groups: int
    eps: float
    time_scale_shift: bool = False
    output_scale_factor: float = 1.0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, skip=None, *, deterministic=True):
        if skip is not None:  # the decoder's skip joined inside the (rematerialised) block
            x = jnp.concatenate([x, skip], axis=-1)
        dt, pdt, out = self.dtype, self.param_dtype, self.out_channels
        gn = dict(num_groups=self.groups, epsilon=self.eps, dtype=dt, param_dtype=pdt)
        h = conv3x3(out, "conv1", dt, pdt)(GroupNorm(**gn, name="norm1")(x, silu=True))
        n_emb = 2 * out if self.time_scale_shift else out
        e = dense(n_emb, "time_emb_proj", wide(dt), pdt)(nn.silu(temb))
        e = e.astype(dt)[:, None, None, :]
        if self.time_scale_shift:  # silu(norm(h) * (1 + scale) + shift), one fused op
            h = GroupNorm(**gn, name="norm2")(h, scale_shift=jnp.split(e, 2, axis=-1), silu=True)
        else:
            h = GroupNorm(**gn, name="norm2")(h + e, silu=True)
        h = nn.Dropout(self.dropout, deterministic=deterministic)(h)
        h = conv3x3(out, "conv2", dt, pdt)(h)
        if x.shape[-1] != out:
            x = conv1x1(out, "conv_shortcut", dt, pdt)(x)
        out = x + h
        if self.output_scale_factor != 1:
            out = out / jnp.asarray(self.output_scale_factor, out.dtype)
        return out


class Attention(nn.Module):
    """diffusers `Attention` as built by the UNet2D blocks (_from_deprecated_attn_block=True)."""

    head_dim: int
    groups: int | None
    eps: float
    rescale_output_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        dt, pdt = self.dtype, self.param_dtype
        tokens = x.reshape(b, hh * ww, c)
        h = tokens
        if self.groups is not None:
            h = GroupNorm(self.groups, self.eps, dt, pdt, name="group_norm")(h)
        heads = c // self.head_dim

        def proj(name):
            y = dense(c, name, dt, pdt)(h)
            return y.reshape(b, hh * ww, heads, self.head_dim)

        a = attention(proj("to_q"), proj("to_k"), proj("to_v"), scale=self.head_dim**-0.5)
        a = dense(c, "to_out_0", dt, pdt)(a.reshape(b, hh * ww, c))
        out = (a + tokens).reshape(b, hh, ww, c)
        if self.rescale_output_factor != 1:
            out = out / jnp.asarray(self.rescale_output_factor, out.dtype)
        return out


class Downsample2D(nn.Module):
    padding: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.padding
        if p == 0:  # diffusers pads right/bottom by one, then a stride-2 conv without padding
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        conv = nn.Conv(
            x.shape[-1], (3, 3), strides=(2, 2), padding=((p, p), (p, p)),
            dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=TORCH_INIT, name="conv",
        )  # fmt: skip
        return conv(x)


class Upsample2D(nn.Module):
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return conv3x3(x.shape[-1], "conv", self.dtype, self.param_dtype)(upsample_nearest2x(x))


class Blocks(nn.Module):
    """Shared settings of the resnets/attentions of one UNet2DModel (its config, as a tuple)."""

    config: tuple
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # remat.REMAT_MODES

    def resnet(self, out, name, scale=1.0):
        cfg = dict(self.config)
        shift = cfg["resnet_time_scale_shift"] == "scale_shift"
        groups, eps, p = cfg["norm_num_groups"], cfg["norm_eps"], cfg["dropout"]
        pdt = self.param_dtype
        block = ResnetBlock2D(out, groups, eps, shift, scale, p, self.dtype, pdt, name=name)
        return lambda h, emb, det, *skip: remat.call(
            block, self.remat, h, emb, *skip, deterministic=det
        )

    def attn(self, ch, name, groups="resnet", scale=1.0):
        cfg = dict(self.config)
        groups = cfg["norm_num_groups"] if groups == "resnet" else groups
        hd = cfg["attention_head_dim"] or ch
        eps, pdt = cfg["norm_eps"], self.param_dtype
        block = Attention(hd, groups, eps, scale, self.dtype, pdt, name=name)
        return lambda h: remat.call(block, self.remat, h)


class DownBlock(Blocks):
    """DownBlock2D / AttnDownBlock2D: returns the output and the skips it adds."""

    out_channels: int = 0
    has_attention: bool = False
    add_downsample: bool = True

    @nn.compact
    def __call__(self, h, emb, det=True):
        skips = []
        for j in range(dict(self.config)["layers_per_block"]):
            h = self.resnet(self.out_channels, f"resnets_{j}")(h, emb, det)
            if self.has_attention:
                h = self.attn(self.out_channels, f"attentions_{j}")(h)
            skips.append(h)
        if self.add_downsample:
            pad = dict(self.config)["downsample_padding"]
            h = Downsample2D(pad, self.dtype, self.param_dtype, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class UpBlock(Blocks):
    """UpBlock2D / AttnUpBlock2D: consumes layers_per_block + 1 skips (last one first)."""

    out_channels: int = 0
    has_attention: bool = False
    add_upsample: bool = True

    @nn.compact
    def __call__(self, h, skips, emb, det=True):
        for j in range(dict(self.config)["layers_per_block"] + 1):
            h = self.resnet(self.out_channels, f"resnets_{j}")(h, emb, det, skips.pop())
            if self.has_attention:
                h = self.attn(self.out_channels, f"attentions_{j}")(h)
        if self.add_upsample:
            h = Upsample2D(self.dtype, self.param_dtype, name="upsamplers_0")(h)
        return h


class MidBlock(Blocks):
    """UNetMidBlock2D: resnet, attention (optional), resnet; mid_block_scale_factor divides each."""

    @nn.compact
    def __call__(self, h, emb, det=True):
        cfg = dict(self.config)
        ch, scale = cfg["block_out_channels"][-1], cfg["mid_block_scale_factor"]
        h = self.resnet(ch, "resnets_0", scale)(h, emb, det)
        if cfg["add_attention"]:
            groups = cfg["attn_norm_num_groups"]
            if groups is None:  # diffusers: no group_norm in the mid attention with scale_shift
                default = cfg["resnet_time_scale_shift"] == "default"
                groups = cfg["norm_num_groups"] if default else None
            h = self.attn(ch, "attentions_0", groups, scale)(h)
        return self.resnet(ch, "resnets_1", scale)(h, emb, det)


class UNet2D(nn.Module):
    """`UNet2DModel(**config)`; `__call__(x (B,H,W,C), t (B,) or scalar, y=None) -> (B,H,W,out)`."""

    config: tuple  # normalize_config(...) as sorted (key, value) pairs: hashable
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # remat.REMAT_MODES

    @nn.compact
    def __call__(self, x, t, y=None, *, train: bool = False):
        cfg = dict(self.config)
        dt, pdt, wdt, det = self.dtype, self.param_dtype, wide(self.dtype), not train
        boc, n_levels = cfg["block_out_channels"], len(cfg["block_out_channels"])
        blocks = dict(config=self.config, dtype=dt, param_dtype=pdt, remat=self.remat)

        if x.ndim != 4 or x.shape[-1] != cfg["in_channels"]:
            raise ValueError(f"unet2d: x must be (B, H, W, {cfg['in_channels']}), got {x.shape}")
        if cfg["center_input_sample"]:
            x = 2 * x - 1.0
        t = batch_timesteps(t, x.shape[0])
        # diffusers computes the sinusoid in float32 whatever the model dtype, then casts.
        emb = timestep_embedding(
            t, boc[0], flip_sin_to_cos=cfg["flip_sin_to_cos"], freq_shift=cfg["freq_shift"],
            dtype=jnp.float32,
        ).astype(wdt)  # fmt: skip
        temb_dim = cfg["time_embedding_dim"] or 4 * boc[0]
        emb = TimestepEmbedding(temb_dim, wdt, pdt, name="time_embedding")(emb)
        if cfg["num_class_embeds"] is not None:
            if y is None:
                raise ValueError("unet2d: a class-conditional model (num_class_embeds) needs y")
            emb = emb + nn.Embed(
                cfg["num_class_embeds"], temb_dim, dtype=wdt, param_dtype=pdt,
                name="class_embedding",
            )(jnp.asarray(y))  # fmt: skip
        elif y is not None:
            raise ValueError("unet2d: labels y given to a model without num_class_embeds")

        h = conv3x3(boc[0], "conv_in", dt, pdt)(x.astype(dt))
        skips = [h]
        for i, kind in enumerate(cfg["down_block_types"]):
            block = DownBlock(
                **blocks, out_channels=boc[i], has_attention=DOWN_BLOCKS[kind],
                add_downsample=i < n_levels - 1, name=f"down_blocks_{i}",
            )  # fmt: skip
            h, new = block(h, emb, det)
            skips += new
        if cfg["mid_block_type"] is not None:
            h = MidBlock(**blocks, name="mid_block")(h, emb, det)
        for i, kind in enumerate(cfg["up_block_types"]):
            block = UpBlock(
                **blocks, out_channels=boc[n_levels - 1 - i], has_attention=UP_BLOCKS[kind],
                add_upsample=i < n_levels - 1, name=f"up_blocks_{i}",
            )  # fmt: skip
            h = block(h, skips, emb, det)

        # Output head in float32 (or wider): cheap, and the sample is what the sampler consumes.
        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        h = GroupNorm(groups, eps, wdt, pdt, name="conv_norm_out")(h.astype(wdt), silu=True)
        return conv3x3(cfg["out_channels"], "conv_out", wdt, pdt)(h)


def build(model_config: dict, dtype: Dtype = jnp.float32, remat_mode: str = "none") -> UNet2D:
    cfg = normalize_config(model_config)
    return UNet2D(tuple(sorted(cfg.items())), dtype=dtype, remat=remat.check_remat(remat_mode))


def example_inputs(model_config: dict, batch: int = 1):
    """Shapes for `jax.eval_shape(model.init, ...)`; parameters do not depend on the image size."""
    import jax

    cfg = normalize_config(model_config)
    s = 2 ** (len(cfg["block_out_channels"]) - 1) * 4
    x = jax.ShapeDtypeStruct((batch, s, s, cfg["in_channels"]), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32) if cfg["num_class_embeds"] is not None else None
    return x, t, y
