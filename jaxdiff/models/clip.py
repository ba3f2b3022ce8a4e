"""The CLIP text encoder (transformers' `CLIPTextModel`) in Flax linen: Stable Diffusion's prompt
conditioning.

`model_config` is the checkpoint's `text_encoder/config.json` (missing fields take transformers'
defaults). Module names mirror the state-dict keys without the `text_model.` prefix, with "."
written "_" (`encoder/layers_0/self_attn/q_proj`), so `jaxdiff/convert/clip.py` is a rename plus
transposes. `model.apply({"params": p}, ids)` returns every output a pipeline conditions on:
`last_hidden_state` (SD 1.x), `penultimate_normed` (the final layer norm applied to the second
to last layer's output: SD 2.x's `penultimate` conditioning) and `pooled` (the eos position).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# CLIPTextConfig defaults (transformers models/clip/configuration_clip.py)
DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "projection_dim": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
# fields of a saved config.json that do not change the network
IGNORED = (
    "architectures",
    "dtype",
    "torch_dtype",
    "model_type",
    "transformers_version",
    "output_attentions",
    "output_hidden_states",
    "use_return_dict",
    "return_dict",
    "tie_word_embeddings",
    "id2label",
    "label2id",
)
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def normalize_config(config: dict) -> dict:
    """text_encoder/config.json -> validated dict with defaults filled."""
    if config.get("model_type", "clip_text_model") not in ("clip_text_model", "clip"):
        raise ValueError(f"clip config: model_type={config['model_type']!r}, not clip_text_model")
    if "text_config" in config:  # a full CLIPModel config: its text half
        config = config["text_config"]
    cfg = {**DEFAULTS}
    for key, value in config.items():
        if key in DEFAULTS:
            cfg[key] = value
    if cfg["hidden_act"] not in ACTIVATIONS:
        raise ValueError(
            f"clip config: hidden_act={cfg['hidden_act']!r}; known: {sorted(ACTIVATIONS)}"
        )
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError(
            f"clip config: hidden_size={cfg['hidden_size']} is not a multiple of "
            f"num_attention_heads={cfg['num_attention_heads']}"
        )
    return cfg


class CLIPAttention(nn.Module):
    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, t, c = x.shape
        d = c // self.heads

        def proj(name):
            return nn.Dense(c, dtype=self.dtype, name=name)

        q = proj("q_proj")(x).reshape(b, t, self.heads, d) * (d**-0.5)
        k = proj("k_proj")(x).reshape(b, t, self.heads, d)
        v = proj("v_proj")(x).reshape(b, t, self.heads, d)
        w = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32)
        causal = jnp.tril(jnp.ones((t, t), bool))
        w = jnp.where(causal, w, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(w, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhts,bshd->bthd", w, v).reshape(b, t, c)
        return proj("out_proj")(out)


class CLIPMLP(nn.Module):
    intermediate: int
    act: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.intermediate, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(ACTIVATIONS[self.act](h))


class CLIPLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(ln1(x)) (causal), then x + mlp(ln2(x))."""

    heads: int
    intermediate: int
    act: str
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ln1 = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="layer_norm1")
        ln2 = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name="layer_norm2")
        x = x + CLIPAttention(self.heads, self.dtype, name="self_attn")(ln1(x))
        mlp = CLIPMLP(self.intermediate, self.act, self.dtype, name="mlp")
        return x + mlp(ln2(x))


class CLIPEmbeddings(nn.Module):
    vocab_size: int
    max_positions: int
    features: int

    @nn.compact
    def __call__(self, input_ids):
        tok = nn.Embed(self.vocab_size, self.features, name="token_embedding")
        pos = nn.Embed(self.max_positions, self.features, name="position_embedding")
        return tok(input_ids) + pos(jnp.arange(input_ids.shape[-1]))[None]


class CLIPEncoder(nn.Module):
    """The layers; returns the last output and the one before it (hidden_states[-2])."""

    num_layers: int
    heads: int
    intermediate: int
    act: str
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        penultimate = x
        for i in range(self.num_layers):
            penultimate = x
            layer = CLIPLayer(
                self.heads, self.intermediate, self.act, self.eps, self.dtype, name=f"layers_{i}"
            )
            x = layer(x)
        return x, penultimate


class CLIPTextModel(nn.Module):
    """ids (B, T) -> {"last_hidden_state", "penultimate_normed": (B, T, C), "pooled": (B, C)}."""

    config: tuple  # sorted items of the normalized config (hashable)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, t=None, y=None):
        """`t` and `y` exist only for the model registry's shared `init(key, x, t, y)`."""
        if t is not None or y is not None:
            raise ValueError("the CLIP text encoder takes no timestep or label")
        cfg = dict(self.config)
        c = cfg["hidden_size"]
        input_ids = jnp.asarray(input_ids)
        t = input_ids.shape[-1]
        if t > cfg["max_position_embeddings"]:
            raise ValueError(
                f"{t} tokens; the text encoder takes at most {cfg['max_position_embeddings']}"
            )
        x = CLIPEmbeddings(cfg["vocab_size"], cfg["max_position_embeddings"], c, name="embeddings")
        x = x(input_ids).astype(self.dtype)
        final_norm = nn.LayerNorm(
            epsilon=cfg["layer_norm_eps"], dtype=self.dtype, name="final_layer_norm"
        )
        x, penultimate = CLIPEncoder(
            cfg["num_hidden_layers"],
            cfg["num_attention_heads"],
            cfg["intermediate_size"],
            cfg["hidden_act"],
            cfg["layer_norm_eps"],
            self.dtype,
            name="encoder",
        )(x)
        last = final_norm(x)
        if cfg["eos_token_id"] == 2:  # legacy configs: the eos is the largest id
            eos_at = jnp.argmax(input_ids, axis=-1)
        else:
            eos_at = jnp.argmax(input_ids == cfg["eos_token_id"], axis=-1)
        pooled = jnp.take_along_axis(last, eos_at[:, None, None], axis=1)[:, 0]
        return {
            "last_hidden_state": last,
            "penultimate_normed": final_norm(penultimate),
            "pooled": pooled,
        }


def build(model_config: dict, dtype: Dtype = jnp.float32) -> CLIPTextModel:
    cfg = normalize_config(model_config)
    return CLIPTextModel(tuple(sorted(cfg.items())), dtype=dtype)


def example_inputs(model_config: dict, batch: int = 1):
    cfg = normalize_config(model_config)
    ids = jax.ShapeDtypeStruct((batch, cfg["max_position_embeddings"]), jnp.int32)
    return ids, None, None
