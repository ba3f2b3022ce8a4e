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


@pytest.mark.parametrize(
    "file", ["sd_single.safetensors", "sd_single.ckpt", "sd2_single.safetensors"]
)
def test_single_file_maps_to_the_diffusers_weights(file):
    parts = sd_single_file.to_diffusers(FIXTURES / file, FOLDER)
    assert sorted(parts) == ["text_encoder", "unet", "vae"]
    for name, got in parts.items():
        want = diffusers_weights(name)
        assert sorted(got) == sorted(want), name
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)


def test_single_file_kind():
    kind = sd_single_file.single_file_kind
    assert kind(FIXTURES / "sd_single.safetensors") == kind(FIXTURES / "sd_single.ckpt") == "sd"
    assert kind(FIXTURES / "ldm_tiny.ckpt") == "ldm"
    assert kind(FOLDER / "unet" / "diffusion_pytorch_model.safetensors") is None


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
    with pytest.raises(CheckpointError, match="OpenCLIP keys .*resblocks.0.attn.odd"):
        bad = {"transformer.resblocks.0.attn.odd": np.zeros(1)}
        sd_single_file.open_clip_to_diffusers(bad, {"num_hidden_layers": 2})
    vae_only = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(vae_only, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint"):
        sd_single_file.to_diffusers(tmp_path / "vae.safetensors", FOLDER)


@pytest.mark.slow
def test_single_file_converts_like_the_folder(tmp_path):
    """Through the pipeline converter: the same parameters as the diffusers folder's (the
    text encoder also from OpenCLIP keys)."""
    pytest.importorskip("jaxdiff.convert.pipeline")
    from jaxdiff.checkpoint import load_checkpoint
    from jaxdiff.convert.core import convert

    config = tmp_path / "configs"  # configs only: the weights come from the single file
    shutil.copytree(FOLDER, config, ignore=shutil.ignore_patterns("*.safetensors"))
    sd_single_file.convert_single_file(
        FIXTURES / "sd_single.ckpt", tmp_path / "single", config, progress=False
    )
    sd_single_file.convert_single_file(
        FIXTURES / "sd2_single.safetensors", tmp_path / "single2", config, progress=False
    )
    convert(FOLDER, tmp_path / "folder", progress=False)
    got, _ = load_checkpoint(tmp_path / "single2" / "text_encoder")
    want, _ = load_checkpoint(tmp_path / "folder" / "text_encoder")
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    for name in ("unet", "vae", "text_encoder"):
        got, _ = load_checkpoint(tmp_path / "single" / name)
        want, _ = load_checkpoint(tmp_path / "folder" / name)
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


LDM = FIXTURES / "ldm_tiny.ckpt"  # adm_tiny_legacy's UNet + vq_tiny's VQ, LDM key layout
ADM = FIXTURES.parent / "adm_tiny_legacy"


def test_ldm_checkpoint_parts():
    from jaxdiff.convert import ldm_single_file, torch_pickle
    from jaxdiff.diffusion import scheduler as sched

    sd = sd_single_file.read_state_dict(LDM)
    unet, first, betas = ldm_single_file.split(sd, "ldm")
    want = torch_pickle.load_state_dict(ADM.with_suffix(".pt"), progress=False)
    assert sorted(unet) == sorted(want)
    assert all(np.array_equal(unet[k], want[k]) for k in want)
    assert "quantize.embedding.weight" in first
    cfg = ldm_single_file.scheduler_config(betas)
    ac = np.cumprod(1 - betas)
    np.testing.assert_allclose(sched.alphas_cumprod(cfg), ac, rtol=1e-6)
    np.testing.assert_array_equal(sched.inference_timesteps(cfg, 4), [751, 501, 251, 1])
    with pytest.raises(CheckpointError, match="needs both"):
        ldm_single_file.split({k: v for k, v in sd.items() if "first_stage" not in k}, "x")


def test_ldm_converts_like_its_parts(tmp_path):
    """The LDM file converts to the UNet of adm_tiny_legacy.pt and the VQ of vq_tiny/."""
    pytest.importorskip("jaxdiff.convert.pipeline")
    from jaxdiff.checkpoint import load_checkpoint
    from jaxdiff.convert.core import convert
    from jaxdiff.convert.ldm_single_file import convert_ldm_file
    from jaxdiff.latent import load_latent_prior

    vq = FIXTURES / "vq_tiny"
    convert_ldm_file(
        LDM, tmp_path / "ldm", unet_config=ADM.with_suffix(".json"), vq_config=vq / "config.json"
    )
    convert(ADM.with_suffix(".pt"), tmp_path / "unet", config=ADM.with_suffix(".json"))
    convert(vq, tmp_path / "vq", progress=False)
    for got, want in (("ldm/unet", "unet"), ("ldm/vqvae", "vq")):
        a, _ = load_checkpoint(tmp_path / got)
        b, _ = load_checkpoint(tmp_path / want)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    prior, params = load_latent_prior(tmp_path / "ldm")
    assert prior.first_stage is not None and prior.scheduler["steps_offset"] == 1


def test_the_converter_command_takes_single_files(tmp_path, capsys):
    """`python -m convert_weights FILE --out DIR`: an SD single file with --config_folder, an LDM
    .ckpt with --config and --vq_config; without them, one line naming the flag (status 2)."""
    from convert_weights.cli import main

    sd = FIXTURES / "sd_single.safetensors"
    assert main([str(sd), "--out", str(tmp_path / "no"), "--quiet"]) == 2
    assert "--config_folder" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    args = [str(sd), "--out", str(tmp_path / "sd"), "--config_folder", str(FOLDER), "--quiet"]
    assert main(args) == 0
    assert "unet" in capsys.readouterr().out
    assert (tmp_path / "sd" / "unet" / "jaxdiff.json").is_file()
    assert main([str(LDM), "--out", str(tmp_path / "ldm0"), "--quiet"]) == 2
    assert "--vq_config" in capsys.readouterr().err
    args = [
        str(LDM), "--out", str(tmp_path / "ldm"), "--config", str(ADM.with_suffix(".json")),
        "--vq_config", str(FIXTURES / "vq_tiny" / "config.json"), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "ldm" / "vqvae" / "jaxdiff.json").is_file()
