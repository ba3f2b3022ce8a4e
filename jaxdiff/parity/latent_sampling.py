"""The latent fixture's text and sampling arrays: token ids (exact), the text encoder's states,
the schedule, the DDIM run with classifier-free guidance (z_T from the fixture; every latent and
guided output compared) and its decoded image, replayed through `jaxdiff.latent.LatentPrior`.

`run_text` and `run_ddim` have the latent replay's stage signature `run(arrays, models, dtype)
-> {name: array in the fixture's layout}`; `models.get(cls)` gives `(module, params, meta)` of a
converted class, `models.folder(cls)` its source folder, `models.sources` every class found and
`models.meta` the fixture's sidecar (prompts, DDIM settings). `TEXT_RULES` / `DDIM_RULES` give each
array its tolerance as rtol (None: exact) on max(1, max|ref|), the fixture README's rules.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import scheduler as sched
from jaxdiff.latent import LatentPrior
from jaxdiff.models.clip_tokenizer import CLIPTokenizer
from jaxdiff.parity.common import nchw_to_nhwc

NETWORK, LATENT, EXACT = 1e-5, 1e-4, None
TEXT_RULES = {
    "text_input_ids": EXACT,
    "text_last_hidden": NETWORK,
    "text_penultimate_normed": NETWORK,
}
DDIM_RULES = {
    "alphas_cumprod": NETWORK,
    "ddim_timesteps": EXACT,
    "ddim_latents": LATENT,
    "ddim_guided_out": NETWORK,
    "ddim_image": NETWORK,
}
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")


def _nchw(x):
    return np.moveaxis(np.asarray(x), -1, -3)


def _scheduler_config(models) -> dict:
    found = [c for c in models.sources if c.endswith("Scheduler")]
    if not found:
        raise FileNotFoundError("no scheduler folder beside the fixture")
    return json.loads((models.folder(found[0]) / "scheduler_config.json").read_text())


ROLES = {
    "unet": "UNet2DConditionModel",
    "first_stage": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
}


def prior_from_models(models, roles=tuple(ROLES)) -> tuple[LatentPrior, dict]:
    """A LatentPrior over the fixture's converted classes: those of `roles` it has."""
    params, parts = {}, {}
    for role in roles:
        if ROLES[role] in models.sources:
            parts[role], params[role], _ = models.get(ROLES[role])
    with_unet = "unet" in parts
    tok = next((c for c in TOKENIZERS if c in models.sources), None)
    unet = parts.get("unet")
    cfg = dict(unet.config) if unet is not None else {"in_channels": 4}
    meta = getattr(models, "meta", {}) or {}
    penultimate = meta.get("config", {}).get("penultimate", False)
    prior = LatentPrior(
        unet_fn=(lambda p, z, t, c: unet.apply({"params": p}, z, t, c)),
        scheduler=_scheduler_config(models) if with_unet else {},
        latent_shape=(1, 1, int(cfg["in_channels"])),  # every run here starts from a given z_T
        first_stage=parts.get("first_stage"),
        text_encoder=parts.get("text_encoder"),
        tokenizer=CLIPTokenizer.from_folder(models.folder(tok)) if tok else None,
        text_output="penultimate_normed" if penultimate else "last_hidden_state",
    )
    return prior, params


def run_text(arrays: dict, models, dtype) -> dict:
    prior, params = prior_from_models(models, ("text_encoder",))
    ids = prior.tokenizer(models.meta["config"]["prompts"], arrays["text_input_ids"].shape[1])
    states = prior.text_encoder.apply({"params": params["text_encoder"]}, ids)
    return {
        "text_input_ids": ids,
        "text_last_hidden": states["last_hidden_state"],
        "text_penultimate_normed": states["penultimate_normed"],
    }


def run_ddim(arrays: dict, models, dtype) -> dict:
    """The pipeline's loop on the fixture's context rows [uncond, cond] and z_T."""
    prior, params = prior_from_models(models, ("unet", "first_stage"))
    ddim = models.meta["config"]["ddim"]
    steps = len(arrays["ddim_timesteps"])
    latents = jnp.asarray(nchw_to_nhwc(arrays["ddim_latents"]), dtype)  # (S+1, B, h, w, c)
    context = jnp.asarray(arrays["text_context"], dtype)
    sample = prior.make_sampler(steps, "ddim")

    def one(z_T):
        return sample(params, jax.random.key(0), context[-1], context[0],
                      ddim["guidance_scale"], ddim.get("eta", 0.0), z_T=z_T)  # fmt: skip

    result = jax.jit(jax.vmap(one))(latents[0])
    out = {
        "alphas_cumprod": sched.alphas_cumprod(prior.scheduler),
        "ddim_timesteps": prior.tables(steps, "ddim")["timesteps"],
        "ddim_latents": _nchw(jnp.moveaxis(result.trajectory, 0, 1)),
        "ddim_guided_out": _nchw(jnp.moveaxis(result.outputs, 0, 1)),
    }
    if prior.first_stage is not None:
        out["ddim_image"] = _nchw(jax.jit(prior.decode)(params, result.z0))
    return out


# (name, classes needed, rules, run): the latent replay's stages for these arrays
STAGES = (
    ("text", ("CLIPTextModel", "CLIPTokenizer"), TEXT_RULES, run_text),
    ("ddim", ("UNet2DConditionModel", "AutoencoderKL"), DDIM_RULES, run_ddim),
)
