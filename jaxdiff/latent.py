"""The latent diffusion prior (Stable Diffusion 1.x / 2.x, LDM): a denoiser in latent space, the
first stage that maps images to latents and back, the text conditioning and the scheduler.

`LatentPrior` holds the modules and settings, never the weights: every function takes `params`,
the dict `{"unet": ..., "first_stage": ..., "text_encoder": ...}` from `load_latent_prior`, so
one compiled sampler serves any checkpoint of the same shapes and `jax.grad` flows through
`encode` / `decode` (the latent inverse-problem methods differentiate through both). Latents are
NHWC and already multiplied by the first stage's scaling factor; images NHWC in [-1, 1].

Sampling (`sample`) is diffusers' DDIM or DDPM on the scheduler config's tables with
classifier-free guidance, one `lax.scan` over time for ONE image (batch with `jax.vmap`): each
step runs the UNet once on the pair [unconditional, conditional] and combines
`out_u + s * (out_c - out_u)`, as StableDiffusionPipeline does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import scheduler as sched
from jaxdiff.models.clip_tokenizer import CLIPTokenizer
from jaxdiff.samplers.latent_common import LatentFns

METHODS = ("ddim", "ddpm")
TEXT_OUTPUTS = ("last_hidden_state", "penultimate_normed")


class LatentSample(NamedTuple):
    z0: jax.Array  # (h, w, c) final latent
    trajectory: jax.Array  # (num_steps + 1, h, w, c): z_T first
    outputs: jax.Array  # (num_steps, h, w, c): the guided network output of each step


@dataclass(frozen=True)
class LatentPrior:
    """unet_fn(params_unet, z (B,h,w,c), t (B,), context (B,T,C)) -> model output;
    first_stage: a module with `encode_latents(x, key=None)` and `decode_latents(z)` (or None);
    text_encoder: `jaxdiff.models.clip.CLIPTextModel` (or None when only embeddings are given);
    scheduler: the scheduler_config.json dict; latent_shape: (h, w, c) of one latent."""

    unet_fn: Callable
    scheduler: dict
    latent_shape: tuple[int, int, int]
    first_stage: object = None
    text_encoder: object = None
    tokenizer: CLIPTokenizer | None = None
    text_output: str = "last_hidden_state"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.text_output not in TEXT_OUTPUTS:
            raise ValueError(f"text_output {self.text_output!r}; known: {TEXT_OUTPUTS}")
        object.__setattr__(self, "scheduler", sched.normalize_config(self.scheduler))

    @property
    def prediction_type(self) -> str:
        return self.scheduler["prediction_type"]

    # the networks -------------------------------------------------------------------------
    def denoise(self, params, z, t, context):
        """The UNet's output (eps, v or x0: `prediction_type`) on a batch of latents."""
        return self.unet_fn(params["unet"], z, t, context)

    def encode(self, params, x, key=None):
        """Images (B, H, W, 3) in [-1, 1] -> scaled latents (the posterior mean, or a sample
        with `key`); differentiable."""
        self._need(self.first_stage, "first_stage")
        fs = self.first_stage
        return fs.apply({"params": params["first_stage"]}, x, key, method=fs.encode_latents)

    def decode(self, params, z):
        """Scaled latents -> images (B, H, W, 3), about [-1, 1]; differentiable."""
        self._need(self.first_stage, "first_stage")
        fs = self.first_stage
        return fs.apply({"params": params["first_stage"]}, z, method=fs.decode_latents)

    # text ---------------------------------------------------------------------------------
    def tokenize(self, prompts) -> np.ndarray:
        self._need(self.tokenizer, "tokenizer")
        length = None
        if self.text_encoder is not None:
            length = dict(self.text_encoder.config)["max_position_embeddings"]
        return self.tokenizer(prompts, max_length=length)

    def embed_ids(self, params, ids):
        """Token ids (B, T) -> the states the UNet is conditioned on (B, T, C)."""
        self._need(self.text_encoder, "text_encoder")
        out = self.text_encoder.apply({"params": params["text_encoder"]}, ids)
        return out[self.text_output]

    def context(self, params, prompts):
        """Prompts (a str or a list of str; "" is the unconditional prompt) or precomputed
        embeddings (an array (T, C) or (B, T, C), returned as (B, T, C)) -> context."""
        if isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts)
        ):
            return self.embed_ids(params, self.tokenize(prompts))
        emb = jnp.asarray(prompts)
        if emb.ndim == 2:
            emb = emb[None]
        if emb.ndim != 3:
            raise ValueError(f"embeddings must be (T, C) or (B, T, C), got shape {emb.shape}")
        return emb

    def _need(self, part, name):
        if part is None:
            raise ValueError(f"this latent prior was loaded without a {name}")

    # sampling -----------------------------------------------------------------------------
    def guided_output(self, params, z, t, cond, uncond=None, guidance_scale=1.0):
        """One image's guided output: the UNet on [uncond, cond] in one call, then
        out_u + s * (out_c - out_u); without `uncond` the conditional output alone."""
        if uncond is None:  # no guidance; cond None for an unconditional model (LDM)
            context = None if cond is None else cond[None]
            return self.denoise(params, z[None], jnp.reshape(t, (1,)), context)[0]
        pair = jnp.stack([z, z])
        out = self.denoise(params, pair, jnp.full((2,), t), jnp.stack([uncond, cond]))
        out_u, out_c = out[0], out[1]
        return out_u + jnp.asarray(guidance_scale, out.dtype) * (out_c - out_u)

    def tables(self, num_steps: int, method: str = "ddim") -> dict[str, np.ndarray]:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {METHODS}")
        table = sched.ddim_tables if method == "ddim" else sched.ddpm_tables
        return table(self.scheduler, num_steps)

    def make_sampler(self, num_steps: int, method: str = "ddim") -> Callable:
        """`sample(params, key, cond, uncond=None, guidance_scale=7.5, eta=0.0, z_T=None,
        noise=None) -> LatentSample` for ONE image: cond / uncond (T, C) contexts; z_T (h, w, c)
        and noise (num_steps, h, w, c) replace the draws (a recorded run is replayed so). Pure
        and jit-able; `eta` (DDIM) and `guidance_scale` are traced."""
        tables = self.tables(num_steps, method)
        cfg = self.scheduler
        last = np.arange(num_steps) == num_steps - 1

        def sample(
            params, key, cond, uncond=None, guidance_scale=7.5, eta=0.0, z_T=None, noise=None
        ):
            k_init, k_steps = jax.random.split(key)
            if z_T is None:
                z_T = jax.random.normal(k_init, self.latent_shape, jnp.float32)
            if noise is None:
                keys = jax.random.split(k_steps, num_steps)
                noise = jax.vmap(lambda k: jax.random.normal(k, z_T.shape, z_T.dtype))(keys)
            xs = {
                "t": jnp.asarray(tables["timesteps"]),
                "alpha": jnp.asarray(tables["alpha"]),
                "alpha_prev": jnp.asarray(tables["alpha_prev"]),
                "noise": jnp.asarray(noise, z_T.dtype),
                "last": jnp.asarray(last),
            }

            def step(z, s):
                out = self.guided_output(params, z, s["t"], cond, uncond, guidance_scale)
                noise = s["noise"]
                if method == "ddim":
                    z_prev = sched.ddim_step(cfg, out, z, s["alpha"], s["alpha_prev"], eta, noise)
                else:
                    z_prev = sched.ddpm_step(
                        cfg, out, z, s["alpha"], s["alpha_prev"], noise, s["last"]
                    )
                return z_prev, (z_prev, out)

            z0, (zs, outs) = jax.lax.scan(step, z_T, xs)
            return LatentSample(z0, jnp.concatenate([z_T[None], zs]), outs)

        return sample


def sample_images(
    prior: LatentPrior,
    params,
    key,
    prompts,
    *,
    num_steps: int = 50,
    guidance_scale: float = 7.5,
    negative_prompt="",
    eta: float = 0.0,
    method: str = "ddim",
) -> tuple[np.ndarray, LatentSample]:
    """Images (B, H, W, 3) in [-1, 1] for prompts (or embeddings), one key per image."""
    cond = prior.context(params, prompts)
    uncond = None
    if guidance_scale != 1.0:
        uncond = prior.context(params, negative_prompt)
        uncond = jnp.broadcast_to(uncond, cond.shape)
    sample = prior.make_sampler(num_steps, method)
    keys = jax.random.split(key, cond.shape[0])
    if uncond is None:
        run = jax.jit(jax.vmap(lambda p, k, c: sample(p, k, c, None, 1.0, eta), (None, 0, 0)))
        result = run(params, keys, cond)
    else:
        run = jax.jit(jax.vmap(lambda p, k, c, u: sample(p, k, c, u, guidance_scale, eta),
                               (None, 0, 0, 0)))  # fmt: skip
        result = run(params, keys, cond, uncond)
    images = jax.jit(prior.decode)(params, result.z0)
    return np.asarray(images), result


def load_latent_prior(path, text_output: str | None = None, dtype=None) -> tuple[LatentPrior, dict]:
    """(prior, params) from a converted pipeline folder (`python -m convert_weights PIPELINE
    --out DIR`: DIR/pipeline.json and one folder per component); `dtype`: the networks' compute
    dtype (float64 for a float64 parity replay)."""
    from jaxdiff.models import load_pretrained

    path = Path(path)
    index_path = path / "pipeline.json"
    if not index_path.is_file() and (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path}: a diffusers pipeline folder; convert it first: "
            f"python -m convert_weights {path} --out DIR"
        )
    if not index_path.is_file():
        raise FileNotFoundError(
            f"{path}: no pipeline.json (convert a diffusers pipeline folder with "
            "`python -m convert_weights FOLDER --out DIR` first)"
        )
    components = json.loads(index_path.read_text())["components"]
    by_class = {c["class"]: (name, c) for name, c in components.items()}
    params, modules, metas = {}, {}, {}
    for role, classes in (
        ("unet", ("UNet2DConditionModel", "UNet2DModel", "UNetModel")),
        ("first_stage", ("AutoencoderKL", "VQModel")),
        ("text_encoder", ("CLIPTextModel",)),
    ):
        found = next((by_class[c] for c in classes if c in by_class), None)
        if found is None:
            if role == "unet":
                raise FileNotFoundError(f"{path}: the pipeline has no UNet")
            continue
        name, entry = found
        modules[role], params[role], metas[role] = load_pretrained(path / entry["path"], dtype)
    scheduler = next((c for c in components.values() if "Scheduler" in c["class"]), None)
    if scheduler is None:
        raise FileNotFoundError(f"{path}: the pipeline has no scheduler")
    sched_cfg = json.loads((path / scheduler["path"] / "scheduler_config.json").read_text())
    tok = next((c for c in components.values() if "Tokenizer" in c["class"]), None)
    tokenizer = CLIPTokenizer.from_folder(path / tok["path"]) if tok else None
    unet = modules["unet"]
    unet_cfg = metas["unet"]["model_config"]
    size = unet_cfg.get("sample_size") or unet_cfg.get("image_size") or 64
    size = size if isinstance(size, (list, tuple)) else (size, size)
    if metas["unet"]["architecture"] == "sd_unet":
        unet_fn = lambda p, z, t, c: unet.apply({"params": p}, z, t, c)  # noqa: E731
    else:  # an unconditional UNet (LDM): no context
        unet_fn = lambda p, z, t, c: unet.apply({"params": p}, z, t)  # noqa: E731
    prior = LatentPrior(
        unet_fn=unet_fn,
        scheduler=sched_cfg,
        latent_shape=(int(size[0]), int(size[1]), int(unet_cfg["in_channels"])),
        first_stage=modules.get("first_stage"),
        text_encoder=modules.get("text_encoder"),
        tokenizer=tokenizer,
        text_output=text_output or "last_hidden_state",
        meta={"path": str(path), "components": components},
    )
    return prior, params


def latent_fns(prior: LatentPrior, params) -> LatentFns:
    """The prior's first stage as the latent samplers take it (`jaxdiff.samplers.latent_common`):
    decode / encode for ONE image, the encoder's posterior sample from a given standard normal
    (a KL first stage), the decoded image shape from the decoder itself (`params` only give
    shapes here; the functions take them as an argument)."""
    fs = prior.first_stage
    prior._need(fs, "first_stage")
    stochastic = type(fs).__name__ == "AutoencoderKL"

    def decode(params, z):
        return prior.decode(params, z[None])[0]

    def encode(params, x, noise=None):
        if noise is None or not stochastic:
            return prior.encode(params, x[None])[0]
        p = {"params": params["first_stage"]}
        mean, logvar = fs.apply(p, x[None], method=fs.encode)
        z = mean[0] + jnp.exp(0.5 * logvar[0]) * noise
        return (z - fs.shift_factor) * jnp.asarray(fs.scaling_factor, z.dtype)

    lshape = tuple(prior.latent_shape)
    out = jax.eval_shape(decode, params, jax.ShapeDtypeStruct(lshape, jnp.float32))
    scale, shift = float(fs.scaling_factor), float(fs.shift_factor)
    return LatentFns(decode, encode, lshape, tuple(out.shape), stochastic, scale, shift)


def latent_model_fn(prior: LatentPrior) -> Callable:
    """`model_fn(params, z, t)` for the latent samplers: the UNet with `params["context"]` (one
    (T, C) context, the unconditional prompt's; None for an unconditional LDM) broadcast over the
    batch."""

    def model_fn(params, z, t):
        ctx = params.get("context")
        if ctx is not None:
            ctx = jnp.broadcast_to(ctx, (z.shape[0], *ctx.shape))
        return prior.denoise(params, z, jnp.broadcast_to(t, (z.shape[0],)), ctx)

    return model_fn


# The experiment driver's view (jaxdiff.experiment): `config.model` a latent prior folder.
def is_latent_prior(path) -> bool:
    """A converted latent pipeline folder (pipeline.json; jaxdiff.latent.load_latent_prior)."""
    return (Path(path) / "pipeline.json").is_file()


@dataclass(frozen=True)
class LatentModel:
    """A loaded latent prior as the experiment's model: the prior and its first stage's
    functions (samplers/latent_common.LatentFns)."""

    prior: object
    fns: object


def load_latent(model_dir):
    """(LatentModel, params, meta) of a latent prior folder: params gain the
    unconditional (empty-prompt) context under "context" (None without a text encoder), meta
    the decoded image size and the scheduler as "diffusion"."""
    prior, params = load_latent_prior(model_dir)
    ctx = prior.context(params, "")[0] if prior.text_encoder is not None else None
    params = {**params, "context": ctx}
    fns = latent_fns(prior, params)
    if fns.image_shape[0] != fns.image_shape[1]:
        raise ValueError(f"{model_dir}: the decoder makes non-square images {fns.image_shape}")
    meta = {
        "architecture": "latent_prior",
        "model_config": {
            "image_size": int(fns.image_shape[0]),
            "latent_shape": list(fns.latent_shape),
            "components": {k: v.get("class") for k, v in prior.meta["components"].items()},
        },
        "diffusion": dict(prior.scheduler),
    }
    return LatentModel(prior, fns), params, meta


def latent_schedule(prior, respacing):
    """The latent prior's training schedule (its scheduler config), respaced; eps models only."""
    from jaxdiff.diffusion import make_schedule

    if prior.prediction_type != "epsilon":
        raise ValueError(
            f"the latent prior predicts {prior.prediction_type!r}: the latent samplers take "
            "epsilon-prediction priors only"
        )
    abar = sched.alphas_cumprod(prior.scheduler)
    return make_schedule(alphas_cumprod=abar, respacing=respacing, convention="diffusers")
