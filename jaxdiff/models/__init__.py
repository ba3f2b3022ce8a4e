"""Flax UNets: guided-diffusion's ADM (`"adm"`) and diffusers' UNet2DModel (`"unet2d"`).

`build_model(arch, model_config)` returns a linen Module used as
`model.apply({"params": params}, x, t, y=None)` with x (B, H, W, C) in [-1, 1] and integer
timesteps t (B,) or scalar; see docs/DESIGN.md. Parameters are always passed in, never closed over.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import adm, autoencoder, clip, sd_unet, unet2d
from jaxdiff.registry import Registry

# name -> module with build(model_config, dtype) and example_inputs(model_config)
MODELS: Registry = Registry("model architecture")
MODELS.register("adm")(adm)
MODELS.register("unet2d")(unet2d)
MODELS.register("sd_unet")(sd_unet)  # diffusers UNet2DConditionModel (Stable Diffusion)
MODELS.register("autoencoder_kl")(autoencoder.KL)  # diffusers AutoencoderKL (SD first stage)
MODELS.register("vq_model")(autoencoder.VQ)  # diffusers VQModel (LDM first stage)
MODELS.register("clip_text")(clip)  # transformers CLIPTextModel (Stable Diffusion's text)
REMAT_ARCHS = ("adm", "unet2d")  # the architectures with block rematerialisation (models/remat.py)


def build_model(arch: str, model_config: dict, dtype=jnp.float32, remat: str = "none") -> nn.Module:
    """The Flax module for `arch` (MODELS); `dtype` is the compute dtype, `remat` the
    rematerialisation of its blocks (models.remat.REMAT_MODES: memory against recomputation;
    the ADM and diffusers UNets take it)."""
    if remat == "none":
        return MODELS.get(arch).build(model_config, dtype=dtype)
    if arch not in REMAT_ARCHS:
        raise ValueError(f"remat={remat!r}: only the {', '.join(REMAT_ARCHS)} networks take it")
    return MODELS.get(arch).build(model_config, dtype=dtype, remat_mode=remat)


def abstract_params(arch: str, model_config: dict) -> dict:
    """The parameter tree's shapes and dtypes (jax.ShapeDtypeStruct leaves), computing nothing.

    `jax.eval_shape(model.init, ...)` traces the whole network (seconds for the 550M ADM), so
    the result is cached per normalized config; callers get their own copy of the tree.
    """
    cfg = MODELS.get(arch).normalize_config(model_config)
    tree = _abstract_params(arch, json.dumps(cfg, sort_keys=True))
    return jax.tree_util.tree_map(lambda leaf: leaf, tree)


@functools.lru_cache(maxsize=64)
def _abstract_params(arch: str, config_json: str) -> dict:
    model_config = json.loads(config_json)
    model = build_model(arch, model_config)
    x, t, y = MODELS.get(arch).example_inputs(model_config)
    return jax.eval_shape(model.init, jax.random.key(0), x, t, y)["params"]


def param_count(params) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)))


def check_params(arch: str, model_config: dict, params, what: str = "params") -> None:
    """Raise KeyMismatchError unless `params` has exactly the tree and shapes the config builds."""
    from jaxdiff.errors import KeyMismatchError

    def flat(tree) -> dict[str, tuple]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(k.key for k in path): tuple(v.shape) for path, v in leaves}

    want, got = flat(abstract_params(arch, model_config)), flat(params)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = [(k, got[k], want[k]) for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    if missing or unexpected or shapes:
        raise KeyMismatchError(what, missing, unexpected, shapes)


def load_pretrained(
    path, dtype=None, *, preset: str | None = None, config=None, remat: str = "none"
) -> tuple[nn.Module, dict, dict]:
    """(model, params, meta) from a folder written by `convert_weights` (jaxdiff.checkpoint), or
    from a checkpoint not converted yet: a guided-diffusion `.pt`/`.pth`/`.bin` or a diffusers
    UNet2DModel folder, converted in memory with the converter's checks (jaxdiff.convert), where
    `preset` / `config` are the converter's --preset / --config (for an ADM file whose network
    the weights alone do not determine; the error says so). `remat` is build_model's.

    The parameter tree is checked against the architecture in the sidecar, so a folder whose
    weights and config disagree fails here with every mismatching name, not inside a sampler.
    """
    from jaxdiff.checkpoint import load_params

    params, meta = load_params(path, preset=preset, config=config)
    arch = meta.get("architecture")
    if arch not in MODELS:
        raise KeyError(f"{path}: unknown architecture {arch!r}; known: {MODELS.names()}")
    if not isinstance(meta.get("diffusion"), dict):
        from jaxdiff.errors import CheckpointError

        raise CheckpointError(
            f"{path}/jaxdiff.json: no 'diffusion' entry (the schedule the model was trained with: "
            "num_timesteps, beta_schedule, variance_type, ...); convert the checkpoint again or "
            "add it (docs/DESIGN.md, Checkpoints)"
        )
    config = meta["model_config"]
    check_params(arch, config, params, what=str(path))
    model = build_model(arch, config, dtype=jnp.float32 if dtype is None else dtype, remat=remat)
    return model, params, meta


class ModelFn:
    """`model_fn(params, x, t)` for the samplers (docs/DESIGN.md); `image_size` is the size the
    network was built for (None when unknown), which the samplers check against the operator.

    The network is applied through one `jax.jit` per module, so a process traces it once and every
    program that calls it (each sampler, each task, the gradient and its Jacobian products) reuses
    that trace: the demo's 27 sampler programs spend ~1.5 s less each in tracing. XLA inlines the
    call: the compiled programs are the same."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.image_size = image_size_of(model)
        self._apply = jax.jit(self._forward)

    def _forward(self, params, x, t):
        return self.model.apply({"params": params}, x, t)

    def __call__(self, params, x, t):
        return self._apply(params, x, t)


@functools.lru_cache(maxsize=16)
def _shared_model_fn(model: nn.Module) -> ModelFn:
    return ModelFn(model)


def model_fn(model: nn.Module) -> Callable:
    """`model_fn(params, x, t)` for the samplers (docs/DESIGN.md): one per module (hashable
    modules share it, with its trace; see ModelFn)."""
    try:
        return _shared_model_fn(model)
    except TypeError:  # an unhashable module: its own
        return ModelFn(model)


def image_size_of(model: nn.Module) -> int | None:
    """The image size in the module's config (ADM `image_size`, diffusers `sample_size`)."""
    config = getattr(model, "config", None)
    try:
        config = dict(config) if config is not None else {}
    except (TypeError, ValueError):
        return None
    size = config.get("image_size", config.get("sample_size"))
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    return int(size) if isinstance(size, (int, np.integer)) and size > 0 else None


__all__ = [
    "MODELS",
    "abstract_params",
    "build_model",
    "check_params",
    "load_pretrained",
    "ModelFn",
    "image_size_of",
    "model_fn",
    "param_count",
]
