"""Sample images from a prompt with a converted latent diffusion pipeline (Stable Diffusion).

    python -m convert_weights PIPELINE_FOLDER --out=DIR          # once: model_index.json folder
    python -m scripts.sample_latent --model=DIR --prompt="a photo of a cat" --out=cat.png \
        [--steps=50] [--guidance_scale=7.5] [--negative_prompt=""] [--method=ddim] [--eta=0] \
        [--num_images=1] [--seed=0] [--text_output=last_hidden_state]

DDIM (or DDPM) in latent space with classifier-free guidance on the pipeline's own scheduler
config, then the first stage's decoder (jaxdiff/latent.py). Writes --out (several images side by
side). Exit status 2 with one line on stderr for a bad model folder or flag, 3 when an image
came out NaN/Inf (named); nothing is written in either case.
"""

from __future__ import annotations

import math
import os
import sys

from absl import flags
from absl import logging as absl_logging

from jaxdiff import cli

_MODEL = flags.DEFINE_string("model", None, "converted pipeline folder (with pipeline.json)")
_PROMPT = flags.DEFINE_string("prompt", None, "the text prompt")
_NEGATIVE = flags.DEFINE_string("negative_prompt", "", "the unconditional prompt of guidance")
_OUT = flags.DEFINE_string("out", "sample.png", "output PNG")
_STEPS = flags.DEFINE_integer("steps", 50, "sampling steps", lower_bound=1)
_SCALE = flags.DEFINE_float("guidance_scale", 7.5, "classifier-free guidance scale (1: none)")
_METHOD = flags.DEFINE_enum("method", "ddim", ["ddim", "ddpm"], "sampler")
_ETA = flags.DEFINE_float("eta", 0.0, "DDIM eta (0: deterministic)")
_NUM = flags.DEFINE_integer("num_images", 1, "images for the prompt, one key each", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "random seed")
_TEXT = flags.DEFINE_enum(
    "text_output",
    None,
    ["last_hidden_state", "penultimate_normed"],
    "text encoder output the UNet is conditioned on (default: the last hidden state)",
)
flags.mark_flags_as_required(["model", "prompt"])
flags.register_validator(
    "guidance_scale", math.isfinite, "--guidance_scale must be a finite number"
)
flags.register_validator(
    "eta", lambda v: math.isfinite(v) and v >= 0, "--eta must be a finite number >= 0"
)
flags.register_validator(
    "out", lambda v: not os.path.isdir(v), "--out names a folder; give the PNG file to write"
)

EXIT_NOT_FINITE = 3


def main(argv):
    cli.no_positional_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    import jax
    import numpy as np

    from jaxdiff import data
    from jaxdiff.latent import load_latent_prior, sample_images

    # bad input (a model folder, a flag) ends in one line through cli.run (--debug: traceback)
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
    bad = [i for i, x in enumerate(np.asarray(images)) if not np.isfinite(x).all()]
    if bad:  # NaN pixels would be written as arbitrary bytes: nothing is written
        print(
            f"sample_latent: images {bad} of {_NUM.value} are not finite (NaN/Inf); "
            f"{_OUT.value} not written",
            file=sys.stderr,
        )
        sys.exit(EXIT_NOT_FINITE)
    data.save_png(_OUT.value, np.concatenate(list(np.clip(images, -1, 1)), axis=1))
    print(f"wrote {_OUT.value} ({_NUM.value} image(s), {images.shape[1]}x{images.shape[2]})")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
