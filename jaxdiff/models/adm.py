"""guided-diffusion's `UNetModel` (ADM) in Flax linen, NHWC.

Module names mirror the PyTorch state-dict keys with "." written "_" (`input_blocks_9_1` is
`input_blocks.9.1`), so the key map in `jaxdiff/convert/adm.py` is a rename plus layout transposes.
Compute runs in `dtype`; like guided-diffusion's fp16 mode, the time-embedding MLPs, GroupNorm
statistics, attention softmax and the output head stay in float32 (or wider).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.models import remat
from jaxdiff.models.layers import (
    GroupNorm,
    attention,
    avg_pool2x,
    batch_timesteps,
    conv1x1,
    conv3x3,
    dense,
    timestep_embedding,
    upsample_nearest2x,
    wide,
)

Dtype = Any

# UNetModel constructor defaults (guided_diffusion/unet.py); image_size .. attention_resolutions
# have no default there and are required here too.
REQUIRED = (
    "image_size",
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
)
DEFAULTS = {
    "dropout": 0.0,
    "channel_mult": (1, 2, 4, 8),
    "conv_resample": True,
    "dims": 2,
    "num_classes": None,
    # accepted without effect: gradient checkpointing and fp16 are runtime choices here
    "use_checkpoint": False,
    "use_fp16": False,
    "num_heads": 1,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "use_new_attention_order": False,
}


def normalize_config(model_config: dict) -> dict:
    """Validate `UNetModel` kwargs and fill defaults; lists become tuples. Errors name the field."""
    unknown = sorted(set(model_config) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"adm model_config: unknown field(s) {unknown}")
    missing = [k for k in REQUIRED if model_config.get(k) is None]
    if missing:
        raise ValueError(f"adm model_config: missing required field(s) {missing}")
    cfg = {**DEFAULTS, **model_config}
    cfg["attention_resolutions"] = tuple(int(r) for r in cfg["attention_resolutions"])
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    if cfg["dims"] != 2:
        raise ValueError(f"adm model_config: dims={cfg['dims']} is not supported (only 2-D)")
    if not cfg["channel_mult"]:
        raise ValueError("adm model_config: channel_mult is empty")
    for key in ("in_channels", "model_channels", "out_channels", "num_res_blocks"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"adm model_config: {key}={cfg[key]!r} must be a positive integer")
    if cfg["num_classes"] is not None and int(cfg["num_classes"]) < 1:
        raise ValueError(f"adm model_config: num_classes={cfg['num_classes']!r}")
    if cfg["num_head_channels"] == -1 and cfg["num_heads"] < 1:
        raise ValueError(f"adm model_config: num_heads={cfg['num_heads']} (num_head_channels=-1)")
    for level, mult in enumerate(cfg["channel_mult"]):
        ch = int(mult * cfg["model_channels"])
        ds = 2**level
        if ds in cfg["attention_resolutions"] or level == len(cfg["channel_mult"]) - 1:
            for key in ("num_heads", "num_heads_upsample"):
                _heads(cfg, ch, key)
    return cfg


def _heads(cfg: dict, channels: int, key: str = "num_heads") -> int:
    """AttentionBlock's head count: num_head_channels wins when != -1."""
    hc = cfg["num_head_channels"]
    if hc != -1:
        if hc < 1 or channels % hc:
            raise ValueError(f"adm model_config: num_head_channels={hc} does not divide {channels}")
        return channels // hc
    n = cfg[key]
    if key == "num_heads_upsample" and n == -1:
        n = cfg["num_heads"]
    if n < 1 or channels % n:
        raise ValueError(f"adm model_config: {key}={n} does not divide {channels} channels")
    return n


class ResBlock(nn.Module):
    out_channels: int
    use_scale_shift_norm: bool
    up: bool = False
    down: bool = False
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, skip=None, *, deterministic=True):
        # The decoder's skip connection is joined here, inside the (rematerialised) block, so
        # the concatenation is recomputed rather than kept.
        if skip is not None:
            x = jnp.concatenate([x, skip], axis=-1)
        dt, pdt, out = self.dtype, self.param_dtype, self.out_channels
        h = GroupNorm(dtype=dt, param_dtype=pdt, name="in_layers_0")(x, silu=True)
        if self.up:
            h, x = upsample_nearest2x(h), upsample_nearest2x(x)
        elif self.down:
            h, x = avg_pool2x(h), avg_pool2x(x)
        h = conv3x3(out, "in_layers_2", dt, pdt)(h)
        n_emb = 2 * out if self.use_scale_shift_norm else out
        e = dense(n_emb, "emb_layers_1", wide(dt), pdt)(nn.silu(emb))
        e = e.astype(dt)[:, None, None, :]
        norm = GroupNorm(dtype=dt, param_dtype=pdt, name="out_layers_0")
        if self.use_scale_shift_norm:  # silu(norm(h) * (1 + scale) + shift), one fused op
            h = norm(h, scale_shift=jnp.split(e, 2, axis=-1), silu=True)
        else:
            h = norm(h + e, silu=True)
        h = nn.Dropout(self.dropout, deterministic=deterministic)(h)
        h = conv3x3(out, "out_layers_3", dt, pdt, zero=True)(h)
        if x.shape[-1] != out:
            x = conv1x1(out, "skip_connection", dt, pdt)(x)
        return x + h


class AttentionBlock(nn.Module):
    num_heads: int
    use_new_attention_order: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        tokens = x.reshape(b, hh * ww, c)
        h = GroupNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(tokens)
        qkv = dense(3 * c, "qkv", self.dtype, self.param_dtype)(h)
        if self.use_new_attention_order:  # QKVAttention: [q all heads | k | v]
            q, k, v = jnp.moveaxis(qkv.reshape(b, hh * ww, 3, heads, ch), 2, 0)
        else:  # QKVAttentionLegacy: per head [q_h | k_h | v_h]
            q, k, v = jnp.moveaxis(qkv.reshape(b, hh * ww, heads, 3, ch), 3, 0)
        scale = jnp.asarray(1 / math.sqrt(math.sqrt(ch)), q.dtype)  # on q and k, as upstream
        a = attention(q * scale, k * scale, v).reshape(b, hh * ww, c)
        a = dense(c, "proj_out", self.dtype, self.param_dtype, zero=True)(a)
        return (tokens + a).reshape(b, hh, ww, c)


class Downsample(nn.Module):
    use_conv: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.use_conv:
            return conv3x3(x.shape[-1], "op", self.dtype, self.param_dtype, stride=2)(x)
        return avg_pool2x(x)


class Upsample(nn.Module):
    use_conv: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = upsample_nearest2x(x)
        if self.use_conv:
            x = conv3x3(x.shape[-1], "conv", self.dtype, self.param_dtype)(x)
        return x


class ADMUNet(nn.Module):
    """`UNetModel(**config)`; `__call__(x (B,H,W,C), t (B,) or scalar, y=None) -> (B,H,W,out)`."""

    config: tuple  # normalize_config(...) as sorted (key, value) pairs: hashable
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # remat.REMAT_MODES

    @nn.compact
    def __call__(self, x, t, y=None, *, train: bool = False):
        cfg = dict(self.config)
        dt, pdt, mc = self.dtype, self.param_dtype, cfg["model_channels"]
        wdt = wide(dt)
        det = not train

        def res(out, name, **kw):
            block = ResBlock(
                out, cfg["use_scale_shift_norm"], dropout=cfg["dropout"], dtype=dt,
                param_dtype=pdt, name=name, **kw,
            )  # fmt: skip
            return lambda h, emb, det, *skip: remat.call(
                block, self.remat, h, emb, *skip, deterministic=det
            )

        def attn(ch, name, key="num_heads"):
            heads = _heads(cfg, ch, key)
            block = AttentionBlock(heads, cfg["use_new_attention_order"], dt, pdt, name=name)
            return lambda h: remat.call(block, self.remat, h)

        if x.ndim != 4 or x.shape[-1] != cfg["in_channels"]:
            raise ValueError(f"adm: x must be (B, H, W, {cfg['in_channels']}), got {x.shape}")
        t = batch_timesteps(t, x.shape[0])
        emb = timestep_embedding(t, mc, flip_sin_to_cos=True, freq_shift=0, dtype=wdt)
        emb = dense(4 * mc, "time_embed_0", wdt, pdt)(emb)
        emb = dense(4 * mc, "time_embed_2", wdt, pdt)(nn.silu(emb))
        if cfg["num_classes"] is not None:
            if y is None:
                raise ValueError("adm: class-conditional model (num_classes set) needs labels y")
            emb = emb + nn.Embed(
                cfg["num_classes"], 4 * mc, dtype=wdt, param_dtype=pdt, name="label_emb"
            )(jnp.asarray(y))
        elif y is not None:
            raise ValueError("adm: labels y given to an unconditional model (num_classes=None)")

        mults, nrb = cfg["channel_mult"], cfg["num_res_blocks"]
        attn_ds = cfg["attention_resolutions"]
        ch = int(mults[0] * mc)
        h = conv3x3(ch, "input_blocks_0_0", dt, pdt)(x.astype(dt))
        hs, ds, idx = [h], 1, 1
        for level, mult in enumerate(mults):
            for _ in range(nrb):
                ch = int(mult * mc)
                h = res(ch, f"input_blocks_{idx}_0")(h, emb, det)
                if ds in attn_ds:
                    h = attn(ch, f"input_blocks_{idx}_1")(h)
                hs.append(h)
                idx += 1
            if level != len(mults) - 1:
                name = f"input_blocks_{idx}_0"
                if cfg["resblock_updown"]:
                    h = res(ch, name, down=True)(h, emb, det)
                else:
                    h = Downsample(cfg["conv_resample"], dt, pdt, name=name)(h)
                hs.append(h)
                ds *= 2
                idx += 1

        h = res(ch, "middle_block_0")(h, emb, det)
        h = attn(ch, "middle_block_1")(h)
        h = res(ch, "middle_block_2")(h, emb, det)

        idx = 0
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(nrb + 1):
                ch = int(mult * mc)
                h = res(ch, f"output_blocks_{idx}_0")(h, emb, det, hs.pop())
                sub = 1
                if ds in attn_ds:
                    h = attn(ch, f"output_blocks_{idx}_1", "num_heads_upsample")(h)
                    sub = 2
                if level and i == nrb:
                    name = f"output_blocks_{idx}_{sub}"
                    if cfg["resblock_updown"]:
                        h = res(ch, name, up=True)(h, emb, det)
                    else:
                        h = Upsample(cfg["conv_resample"], dt, pdt, name=name)(h)
                    ds //= 2
                idx += 1

        # The output head runs in float32 (or wider), as guided-diffusion's fp16 mode does.
        h = GroupNorm(dtype=wdt, param_dtype=pdt, name="out_0")(h.astype(wdt), silu=True)
        return conv3x3(cfg["out_channels"], "out_2", wdt, pdt, zero=True)(h)


def build(model_config: dict, dtype: Dtype = jnp.float32, remat_mode: str = "none") -> ADMUNet:
    cfg = normalize_config(model_config)
    return ADMUNet(tuple(sorted(cfg.items())), dtype=dtype, remat=remat.check_remat(remat_mode))


def example_inputs(model_config: dict, batch: int = 1):
    """Shapes for `jax.eval_shape(model.init, ...)`: (x, t, y) at the model's own image size."""
    import jax

    cfg = normalize_config(model_config)
    s = cfg["image_size"]
    x = jax.ShapeDtypeStruct((batch, s, s, cfg["in_channels"]), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32) if cfg["num_classes"] is not None else None
    return x, t, y
