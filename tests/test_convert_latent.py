"""The converter on latent-diffusion folders: diffusers components (UNet2DConditionModel,
AutoencoderKL, VQModel), whole pipeline folders, sharded weights, and each kind of bad input."""

import json
import re
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from convert_weights import cli
from jaxdiff.checkpoint import load_checkpoint
from jaxdiff.convert import latent
from jaxdiff.convert.core import convert
from jaxdiff.errors import CheckpointError, KeyMismatchError
from jaxdiff.models import load_pretrained
from tests.conftest import FIXTURES

LATENT = FIXTURES / "latent"
SD = LATENT / "sd_tiny"


def pipeline(tmp_path, components=("unet", "vae", "scheduler"), extra=None):
    """A pipeline folder of the fixture's components (copied), with its model_index.json."""
    index = json.loads((SD / "model_index.json").read_text())
    keep = {k: v for k, v in index.items() if k.startswith("_") or k in components}
    keep.update({"safety_checker": [None, None], **(extra or {})})
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    for name in components:
        shutil.copytree(SD / name, pipe / name)
    (pipe / "model_index.json").write_text(json.dumps(keep))
    return pipe


def test_pipeline_folder_converts_every_component(tmp_path, capsys):
    pipe = pipeline(tmp_path)
    assert cli.main([str(pipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "StableDiffusionPipeline: unet (sd_unet), vae (autoencoder_kl), scheduler (files)" in (
        capsys.readouterr().out
    )
    index = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert index["components"]["unet"] == {
        "class": "UNet2DConditionModel",
        "kind": "model",
        "path": "unet",
        "architecture": "sd_unet",
        "num_parameters": 792964,
    }
    assert (tmp_path / "out" / "scheduler" / "scheduler_config.json").is_file()

    model, params, meta = load_pretrained(tmp_path / "out" / "unet")
    diffusion = meta["diffusion"]
    assert diffusion["beta_schedule"] == "scaled_linear" and diffusion["beta_end"] == 0.012
    assert diffusion["prediction_type"] == "epsilon"
    assert diffusion["scheduler"]["steps_offset"] == 1
    assert diffusion["scheduler"]["set_alpha_to_one"] is False
    assert meta["source"]["scheduler_config"] == "../scheduler/scheduler_config.json"
    sd = load_file(str(SD / "unet" / "diffusion_pytorch_model.safetensors"))
    back = latent.params_to_state_dict(params, "sd_unet", meta["model_config"])
    assert sorted(back) == sorted(sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)

    _, vae_params, vae_meta = load_pretrained(tmp_path / "out" / "vae")
    assert vae_meta["architecture"] == "autoencoder_kl"
    assert vae_meta["model_config"]["scaling_factor"] == 0.18215


def test_component_folders_and_v_prediction(tmp_path):
    meta = convert(LATENT / "vq_tiny", tmp_path / "vq", progress=False)
    assert meta["architecture"] == "vq_model" and meta["source"]["class"] == "VQModel"
    params, _ = load_checkpoint(tmp_path / "vq")
    assert params["quantize"]["embedding"]["embedding"].shape == (64, 3)
    meta = convert(LATENT / "sd2_unet", tmp_path / "sd2", progress=False)
    assert meta["diffusion"]["prediction_type"] == "v_prediction"
    assert meta["source"]["scheduler_config"] == "scheduler_config.json"
    assert meta["model_config"]["use_linear_projection"] is True


def test_sharded_safetensors_read_as_one(tmp_path):
    sd = load_file(str(SD / "vae" / "diffusion_pytorch_model.safetensors"))
    keys = sorted(sd)
    shards = {"a.safetensors": keys[::2], "b.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    got, fmt, hashes = latent.read_weights(index, progress=False)
    assert fmt == "safetensors-sharded" and sorted(hashes) == sorted(shards)
    assert sorted(got) == keys and all(np.array_equal(got[k], sd[k]) for k in keys)
    (tmp_path / "b.safetensors").unlink()
    with pytest.raises(CheckpointError, match="its shard b.safetensors is missing"):
        latent.read_weights(index, progress=False)


def test_missing_components_one_error_nothing_written(tmp_path):
    pipe = pipeline(tmp_path, extra={"vae": ["diffusers", "AutoencoderKL"]}, components=("unet",))
    index = json.loads((pipe / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "FancyTextModel"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    (pipe / "text_encoder").mkdir()
    out = tmp_path / "out"  # an earlier conversion, which --force may replace
    out.mkdir()
    (out / "pipeline.json").write_text("{}")
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError) as err:
        convert(pipe, out, force=True, progress=False)
    msg = str(err.value)
    assert f"component 'vae' (diffusers AutoencoderKL): no folder {pipe / 'vae'}" in msg
    assert "component 'text_encoder': no converter for transformers FancyTextModel" in msg
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "pipeline.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_never_replaces_a_folder_that_is_not_a_converted_model(tmp_path, capsys):
    """`--force` replaces an earlier conversion (pipeline.json or jaxdiff.json) or an empty
    folder; a run's results (or any other folder) stay, refused in one line."""
    pipe = pipeline(tmp_path, components=("scheduler",))
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("{}\n")
    assert cli.main([str(pipe), "--out", str(run), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "without pipeline.json or jaxdiff.json (not a jaxdiff checkpoint)" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["results.jsonl"]
    out = tmp_path / "out"
    assert cli.main([str(pipe), "--out", str(out), "--quiet"]) == 0
    assert cli.main([str(pipe), "--out", str(out), "--force", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json", "scheduler"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_shapes_that_do_not_match_the_config(tmp_path):
    unet = tmp_path / "unet"
    shutil.copytree(SD / "unet", unet)
    shutil.copytree(SD / "scheduler", tmp_path / "scheduler")
    config = json.loads((unet / "config.json").read_text())
    config["cross_attention_dim"] = 48
    (unet / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeyMismatchError) as err:
        convert(unet, tmp_path / "out", progress=False)
    bad = [k for k, _, _ in err.value.shape_mismatches]
    # the cross-attention k/v of the four transformer blocks (down 0, mid, up 1 twice)
    assert len(bad) == 8 and all(re.search(r"\.attn2\.to_[kv]\.weight$", k) for k in bad)
    assert not err.value.missing and not err.value.unexpected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "case, match",
    [
        ("scheduler", "a DDIMScheduler folder holds no weights to convert"),
        ("unknown_class", "holds a ControlNetModel, which has no converter"),
        ("no_scheduler", "prediction type .* cannot be guessed"),
        ("no_weights", "none of the weight files"),
        ("bad_config", "sd_unet config: mid_block_type='UNetMidBlock2DSimpleCrossAttn'"),
    ],
)
def test_folders_of_the_wrong_kind(tmp_path, capsys, case, match):
    folder = tmp_path / case
    if case == "scheduler":
        shutil.copytree(SD / "scheduler", folder)
    else:
        shutil.copytree(SD / "unet", folder)
        config = json.loads((folder / "config.json").read_text())
        if case == "unknown_class":
            config["_class_name"] = "ControlNetModel"
        if case == "bad_config":
            config["mid_block_type"] = "UNetMidBlock2DSimpleCrossAttn"
        if case in ("no_weights", "bad_config"):
            (folder / "scheduler_config.json").write_text("{}")
        if case == "no_weights":
            (folder / "diffusion_pytorch_model.safetensors").unlink()
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises((CheckpointError, ValueError), match=match):
        convert(folder, tmp_path / "out", progress=False)
    assert cli.main([str(folder), "--out", str(tmp_path / "out"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("convert_weights: error:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # converts two components and compiles three networks: ~30 s on 2 cores
def test_parity_replay_on_the_converted_pipeline(tmp_path):
    """`python -m jaxdiff.parity latent.npz` with --model: every VAE, VQ and UNet array within
    its rule (the VQ model converted from beside the fixture)."""
    from jaxdiff.parity import latent as replay

    convert(pipeline(tmp_path), tmp_path / "out", progress=False)
    with jax.default_matmul_precision("highest"):
        result = replay.replay(LATENT / "latent.npz", model_dir=tmp_path / "out")
    assert result["pass"], result
    assert set(result["arrays"]) == {
        "vae_mean", "vae_logvar", "vae_z", "vae_decoded",
        "vq_h", "vq_quant", "vq_indices", "vq_decoded", "unet_out",
    }  # fmt: skip
    assert result["arrays"]["vq_indices"] == {"mismatches": 0, "pass": True, "rule": "exact"}
    assert result["arrays"]["unet_out"]["rule"] == "1e-05 * max(1, max|ref|)"


def test_ddpm_pipeline_folder_converts_its_unet2d(tmp_path):
    """A DDPMPipeline folder (UNet2DModel + DDPMScheduler) goes through the same pipeline path;
    the UNet is converted by the UNet2DModel converter and reads the scheduler beside it."""
    pipe = tmp_path / "ddpm"
    shutil.copytree(FIXTURES / "diffusers_tiny", pipe / "unet")
    (pipe / "scheduler").mkdir()
    sched = {"_class_name": "DDPMScheduler", "beta_end": 0.03, "variance_type": "fixed_large"}
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    index = {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (pipe / "model_index.json").write_text(json.dumps(index))
    meta = convert(pipe, tmp_path / "out", progress=False)
    assert meta["components"]["unet"]["architecture"] == "unet2d"
    _, _, unet_meta = load_pretrained(tmp_path / "out" / "unet")
    assert unet_meta["diffusion"]["beta_end"] == 0.03
    assert unet_meta["diffusion"]["variance_type"] == "fixed_large"
