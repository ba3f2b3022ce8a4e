"""diffusers' `UNet2DConditionModel` (Stable Diffusion 1.x / 2.x) in Flax linen, NHWC.

`model_config` is the UNet's `config.json`; every size is read from it (missing fields take
diffusers' defaults, unsupported options raise naming the field). The call is
`model.apply({"params": p}, z, t, context)`: latents z (B, h, w, C), integer timesteps t (B,) or
scalar, text context (B, T, cross_attention_dim) -> the model output (epsilon or v: the
scheduler's `prediction_type`, recorded in the checkpoint's sidecar, decides which).

Naming quirk kept from diffusers: for SD configs `attention_head_dim` is the NUMBER of heads per
level (`num_attention_heads` when set wins); each head's width is channels // heads. Module names
mirror the state-dict keys with "." written "_", as in `unet2d.py`, whose ResNet, down/upsample
and time-embedding layers are reused here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.fused import Conv
from jaxdiff.models.layers import (
    TORCH_INIT,
    GroupNorm,
    batch_timesteps,
    timestep_embedding,
    wide,
)
from jaxdiff.models.sd_transformer import Transformer2D
from jaxdiff.models.unet2d import (
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Upsample2D,
    level_config,
)

Dtype = Any

# UNet2DConditionModel.__init__ defaults (diffusers models/unets/unet_2d_condition.py).
DEFAULTS = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
    ),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": (
        "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
    ),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "upcast_attention": False,  # the softmax always runs in float32 or wider here
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,  # only read by block types not supported here
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64,
}  # fmt: skip
DOWN_BLOCKS = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}  # name -> has attention
UP_BLOCKS = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)
# options that change the network in ways this port does not implement: field -> allowed values
UNSUPPORTED = {
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "num_class_embeds": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "resnet_skip_time_act": (False,),
    "dual_cross_attention": (False,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
    "reverse_transformer_layers_per_block": (None,),
}
PER_LEVEL = (
    "layers_per_block",
    "transformer_layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "only_cross_attention",
)


def _check(ok: bool, field: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"sd_unet config: {field}={value!r} is not supported ({why})")


def _per_level(value, n: int, field: str) -> tuple:
    if isinstance(value, (list, tuple)):
        _check(len(value) == n, field, value, f"needs one entry per level ({n})")
        return tuple(value)
    return (value,) * n


def normalize_config(config: dict) -> dict:
    """UNet2DConditionModel config.json -> validated dict with defaults filled, per-level fields
    as tuples (`heads` added: the number of attention heads at each level)."""
    name = config.get("_class_name", "UNet2DConditionModel")
    if name != "UNet2DConditionModel":
        raise ValueError(f"sd_unet config: _class_name={name!r}, not UNet2DConditionModel")
    cfg = level_config(config, DEFAULTS, DOWN_BLOCKS, UP_BLOCKS, "sd_unet", extra=("heads",))
    n = len(cfg["block_out_channels"])
    _check(cfg["mid_block_type"] in MID_BLOCKS, "mid_block_type", cfg["mid_block_type"], "")
    for key, allowed in UNSUPPORTED.items():
        _check(cfg[key] in allowed, key, cfg[key], f"supported: {list(allowed)}")
    for key in PER_LEVEL:
        if key != "num_attention_heads" or cfg[key] is not None:
            cfg[key] = _per_level(cfg[key], n, key)
    _check(not any(cfg["only_cross_attention"]), "only_cross_attention", True, "")
    for v in cfg["transformer_layers_per_block"]:
        _check(isinstance(v, int), "transformer_layers_per_block", v, "one int per level")
    dims = set(cfg["cross_attention_dim"])
    _check(len(dims) == 1, "cross_attention_dim", cfg["cross_attention_dim"], "one text width")
    cfg["heads"] = cfg["num_attention_heads"] or cfg["attention_head_dim"]
    groups = cfg["norm_num_groups"]
    _check(isinstance(groups, int) and groups > 0, "norm_num_groups", groups, "needs an int")
    for c, heads in zip(cfg["block_out_channels"], cfg["heads"]):
        _check(c % groups == 0, "norm_num_groups", groups, f"must divide channels {c}")
        _check(c % heads == 0, "attention heads", heads, f"must divide channels {c}")
    for key in ("conv_in_kernel", "conv_out_kernel"):
        _check(cfg[key] % 2 == 1, key, cfg[key], "odd kernel sizes only")
    return cfg


class Levels(nn.Module):
    """The shared settings of every block of one UNet (its normalized config, as a tuple)."""

    config: tuple
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def resnet(self, out, name, scale=1.0):
        cfg = dict(self.config)
        shift = cfg["resnet_time_scale_shift"] == "scale_shift"
        groups, eps, p = cfg["norm_num_groups"], cfg["norm_eps"], cfg["dropout"]
        pdt = self.param_dtype
        return ResnetBlock2D(out, groups, eps, shift, scale, p, self.dtype, pdt, name=name)

    def transformer(self, level, name, layers=None):
        cfg = dict(self.config)
        layers = cfg["transformer_layers_per_block"][level] if layers is None else layers
        return Transformer2D(
            cfg["heads"][level], layers, cfg["norm_num_groups"], cfg["use_linear_projection"],
            self.dtype, self.param_dtype, name=name,
        )  # fmt: skip


class DownBlock(Levels):
    """DownBlock2D / CrossAttnDownBlock2D at `level`: the output and the skips it adds."""

    level: int = 0
    has_attention: bool = False
    add_downsample: bool = True

    @nn.compact
    def __call__(self, h, emb, context, det=True):
        cfg = dict(self.config)
        out, skips = cfg["block_out_channels"][self.level], []
        for j in range(cfg["layers_per_block"][self.level]):
            h = self.resnet(out, f"resnets_{j}")(h, emb, deterministic=det)
            if self.has_attention:
                h = self.transformer(self.level, f"attentions_{j}")(h, context)
            skips.append(h)
        if self.add_downsample:
            pad = cfg["downsample_padding"]
            h = Downsample2D(pad, self.dtype, self.param_dtype, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class UpBlock(Levels):
    """UpBlock2D / CrossAttnUpBlock2D for down `level` (up blocks run the levels in reverse):
    layers_per_block + 1 resnets, each on the output concatenated with the last skip."""

    level: int = 0
    has_attention: bool = False
    add_upsample: bool = True

    @nn.compact
    def __call__(self, h, skips, emb, context, det=True):
        cfg = dict(self.config)
        out = cfg["block_out_channels"][self.level]
        for j in range(cfg["layers_per_block"][self.level] + 1):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = self.resnet(out, f"resnets_{j}")(h, emb, deterministic=det)
            if self.has_attention:
                h = self.transformer(self.level, f"attentions_{j}")(h, context)
        if self.add_upsample:
            h = Upsample2D(self.dtype, self.param_dtype, name="upsamplers_0")(h)
        return h


class MidBlock(Levels):
    """UNetMidBlock2DCrossAttn: resnet, transformer, resnet (mid_block_scale_factor divides)."""

    @nn.compact
    def __call__(self, h, emb, context, det=True):
        cfg = dict(self.config)
        ch, scale, last = cfg["block_out_channels"][-1], cfg["mid_block_scale_factor"], -1
        h = self.resnet(ch, "resnets_0", scale)(h, emb, deterministic=det)
        h = self.transformer(len(cfg["block_out_channels"]) + last, "attentions_0")(h, context)
        return self.resnet(ch, "resnets_1", scale)(h, emb, deterministic=det)


def _conv(features, kernel, name, dtype, param_dtype):
    p = (kernel - 1) // 2
    return Conv(
        features, (kernel, kernel), padding=((p, p), (p, p)), dtype=dtype,
        param_dtype=param_dtype, kernel_init=TORCH_INIT, name=name,
    )  # fmt: skip


class UNet2DCondition(nn.Module):
    """`UNet2DConditionModel(**config)`: (z, t, context) -> (B, h, w, out_channels)."""

    config: tuple  # normalize_config(...) as sorted (key, value) pairs: hashable
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, context=None, *, train: bool = False):
        cfg = dict(self.config)
        dt, pdt, wdt, det = self.dtype, self.param_dtype, wide(self.dtype), not train
        boc, n_levels = cfg["block_out_channels"], len(cfg["block_out_channels"])
        levels = dict(config=self.config, dtype=dt, param_dtype=pdt)

        if x.ndim != 4 or x.shape[-1] != cfg["in_channels"]:
            raise ValueError(f"sd_unet: z must be (B, h, w, {cfg['in_channels']}), got {x.shape}")
        factor = 2 ** (n_levels - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"sd_unet: latent size {x.shape[1:3]} is not a multiple of {factor}")
        width = cfg["cross_attention_dim"][0]
        if context is None or jnp.ndim(context) != 3 or context.shape[-1] != width:
            got = None if context is None else jnp.shape(context)
            raise ValueError(
                f"sd_unet: context must be (B, tokens, {width}) text states (the empty prompt's "
                f"for unconditional use), got {got}"
            )
        if context.shape[0] != x.shape[0]:
            context = jnp.broadcast_to(context, (x.shape[0], *context.shape[1:]))
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

        h = _conv(boc[0], cfg["conv_in_kernel"], "conv_in", dt, pdt)(x.astype(dt))
        skips = [h]
        for i, kind in enumerate(cfg["down_block_types"]):
            block = DownBlock(
                **levels, level=i, has_attention=DOWN_BLOCKS[kind],
                add_downsample=i < n_levels - 1, name=f"down_blocks_{i}",
            )  # fmt: skip
            h, new = block(h, emb, context, det)
            skips += new
        if cfg["mid_block_type"] is not None:
            h = MidBlock(**levels, name="mid_block")(h, emb, context, det)
        for i, kind in enumerate(cfg["up_block_types"]):
            block = UpBlock(
                **levels, level=n_levels - 1 - i, has_attention=UP_BLOCKS[kind],
                add_upsample=i < n_levels - 1, name=f"up_blocks_{i}",
            )  # fmt: skip
            h = block(h, skips, emb, context, det)

        groups, eps = cfg["norm_num_groups"], cfg["norm_eps"]
        h = GroupNorm(groups, eps, wdt, pdt, name="conv_norm_out")(h.astype(wdt), silu=True)
        return _conv(cfg["out_channels"], cfg["conv_out_kernel"], "conv_out", wdt, pdt)(h)


def build(model_config: dict, dtype: Dtype = jnp.float32) -> UNet2DCondition:
    cfg = normalize_config(model_config)
    return UNet2DCondition(tuple(sorted(cfg.items())), dtype=dtype)


def example_inputs(model_config: dict, batch: int = 1):
    """Shapes for `jax.eval_shape(model.init, ...)`; parameters depend on neither the latent
    size nor the number of text tokens."""
    cfg = normalize_config(model_config)
    s = 2 ** (len(cfg["block_out_channels"]) - 1)
    z = jax.ShapeDtypeStruct((batch, s, s, cfg["in_channels"]), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    context = jax.ShapeDtypeStruct((batch, 1, cfg["cross_attention_dim"][0]), jnp.float32)
    return z, t, context
