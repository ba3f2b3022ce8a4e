"""Original single-file Stable Diffusion checkpoints: diffusers' key mapping, .safetensors and
.ckpt (the safe pickle reader), checked against the same weights in the diffusers layout."""

import pathlib
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.convert import sd_single_file
from jaxdiff.errors import CheckpointError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "latent"
FOLDER = FIXTURES / "sd_single"  # the same tiny pipeline as a diffusers folder


def diffusers_weights(name):
    sd = load_file(str(FOLDER / name / sd_single_file.WEIGHT_FILES[name]))
    if name == "text_encoder":  # transformers >= 5 saved it without the prefix
        sd = {"text_model." + k.removeprefix("text_model."): v for k, v in sd.items()}
    return sd


@pytest.mark.parametrize("file", ["sd_single.safetensors", "sd_single.ckpt"])
def test_single_file_maps_to_the_diffusers_weights(file):
    parts = sd_single_file.to_diffusers(FIXTURES / file, FOLDER)
    assert sorted(parts) == ["text_encoder", "unet", "vae"]
    for name, got in parts.items():
        want = diffusers_weights(name)
        assert sorted(got) == sorted(want), name
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)


def test_unknown_and_missing_keys(tmp_path):
    sd = load_file(str(FIXTURES / "sd_single.safetensors"))
    with pytest.raises(CheckpointError, match="keys of no component: \\['mystery'\\]"):
        sd_single_file.split({**sd, "mystery": np.zeros(1)})
    with pytest.raises(CheckpointError, match="does not know.*input_blocks.1.7"):
        bad = {**sd, "model.diffusion_model.input_blocks.1.7.weight": np.zeros(1)}
        sd_single_file.unet_to_diffusers(
            {k[len("model.diffusion_model.") :]: v for k, v in bad.items() if "diffusion" in k},
            {"layers_per_block": 2},
        )
    with pytest.raises(CheckpointError, match="OpenCLIP"):
        sd_single_file.split({**sd, "cond_stage_model.model.token_embedding.weight": np.zeros(1)})
    vae_only = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint"):
        sd_single_file.to_diffusers(tmp_path / "vae.safetensors", FOLDER)


def test_single_file_converts_like_the_folder(tmp_path):
    """Through the pipeline converter: the same parameters as the diffusers folder's."""
    pytest.importorskip("jaxdiff.convert.pipeline")
    from jaxdiff.checkpoint import load_checkpoint
    from jaxdiff.convert.core import convert

    config = tmp_path / "configs"  # configs only: the weights come from the single file
    shutil.copytree(FOLDER, config, ignore=shutil.ignore_patterns("*.safetensors"))
    sd_single_file.convert_single_file(
        FIXTURES / "sd_single.ckpt", tmp_path / "single", config, progress=False
    )
    convert(FOLDER, tmp_path / "folder", progress=False)
    for name in ("unet", "vae", "text_encoder"):
        got, _ = load_checkpoint(tmp_path / "single" / name)
        want, _ = load_checkpoint(tmp_path / "folder" / name)
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
