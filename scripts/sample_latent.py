"""Sample images from a prompt with a converted latent diffusion pipeline (Stable Diffusion).

    python -m convert_weights PIPELINE_FOLDER --out=DIR          # once: model_index.json folder
    python -m scripts.sample_latent --model=DIR --prompt="a photo of a cat" --out=cat.png \
        [--steps=50] [--guidance_scale=7.5] [--negative_prompt=""] [--method=ddim] [--eta=0] \
        [--num_images=1] [--seed=0] [--text_output=last_hidden_state]

DDIM (or DDPM) in latent space with classifier-free guidance on the pipeline's own scheduler
config, then the first stage's decoder (jaxdiff/latent.py). Writes --out (several images side by
side). Exit status 2 with one line on stderr for a bad model folder or flag; nothing is written.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from absl import logging as absl_logging

from jaxdiff import cli

_MODEL = flags.DEFINE_string("model", None, "converted pipeline folder (with pipeline.json)")
_PROMPT = flags.DEFINE_string("prompt", None, "the text prompt")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "the unconditional prompt of guidance")
_OUT = flags.DEFINE_string("out", "sample.png", "output PNG")
_STEPS = flags.DEFINE_integer("steps", 50, "sampling steps")
_SCALE = flags.DEFINE_float("guidance_scale", 7.5, "classifier-free guidance scale (1: none)")
_METHOD = flags.DEFINE_enum("method", "ddim", ["ddim", "ddpm"], "sampler")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM eta (0: deterministic)")
_NUM = flags.DEFINE_integer("num_images", 1, "images for the prompt, one key each")
_SEED = flags.DEFINE_integer("seed", 0, "random seed")
_TEXT = flags.DEFINE_enum(
    "text_output",
    None,
    ["last_hidden_state", "penultimate_normed"],
    "text encoder output the UNet is conditioned on (default: the last hidden state)",
)
_DEBUG = flags.DEFINE_bool("debug", False, "show the traceback of an error")
flags.mark_flags_as_required(["model", "prompt"])


def main(argv):
    cli.no_positional_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    import jax
    import numpy as np

    from jaxdiff import data
    from jaxdiff.errors import JaxdiffError
    from jaxdiff.latent import load_latent_prior, sample_images

    try:
        if _NUM.value < 1:
            raise ValueError(f"--num_images must be >= 1, got {_NUM.value}")
        prior, params = load_latent_prior(_MODEL.value, _TEXT.value)
        images, _ = sample_images(
            prior,
            params,
            jax.random.key(_SEED.value),
            [_PROMPT.value] * _NUM.value,
            num_steps=_STEPS.value,
            guidance_scale=_SCALE.value,
            negative_prompt=_NEGATIVE.value,
            eta=_ETA.value,
            method=_METHOD.value,
        )
    except (JaxdiffError, ValueError, KeyError, FileNotFoundError, json.JSONDecodeError) as e:
        if _DEBUG.value:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sample_latent: error: {msg}", file=sys.stderr)
        sys.exit(2)
    data.save_png(_OUT.value, np.concatenate(list(np.clip(images, -1, 1)), axis=1))
    print(f"wrote {_OUT.value} ({_NUM.value} image(s), {images.shape[1]}x{images.shape[2]})")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
