"""The converter CLI end to end on the four fixture checkpoints, and on every kind of bad input."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from convert_weights import cli
from jaxdiff.checkpoint import load_checkpoint
from jaxdiff.convert import core
from tests.test_torch_pickle import Call, tensor, write_zip

DIFFUSERS_FILES = {
    "diffusers_tiny": ("diffusion_pytorch_model.safetensors", "safetensors", "sha256_safetensors"),
    "diffusers_tiny_oldkeys": ("diffusion_pytorch_model.bin", "pt-zip", "sha256_bin"),
}


def run(*argv):
    return cli.main([str(a) for a in argv] + ["--quiet"])


def _leaves(params):
    return jax.tree_util.tree_leaves_with_path(params)


@pytest.mark.parametrize("folder", sorted(DIFFUSERS_FILES))
def test_diffusers_folder(fixtures_dir, tmp_path, capsys, folder):
    weights, fmt, sha_key = DIFFUSERS_FILES[folder]
    fixture = json.loads((fixtures_dir / "diffusers_tiny.json").read_text())
    assert run(fixtures_dir / folder, "--out", tmp_path / "out") == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(f"unet2d, 280,755 parameters from {weights} ({fmt}), variance fixed_small")
    params, meta = load_checkpoint(tmp_path / "out")
    assert meta["architecture"] == "unet2d" and meta["num_parameters"] == fixture["num_parameters"]
    assert meta["source"] == {
        "file": weights,
        "sha256": fixture[sha_key],
        "format": fmt,
        "scheduler_config": None,
        "diffusers_version": "0.42.1",
    }
    assert meta["diffusion"] == {
        "num_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "variance_type": "fixed_small",
        "schedule_dtype": "float32",
        "prediction_type": "epsilon",
        "clip_sample": True,
    }
    for k, v in fixture["kwargs"].items():
        assert meta["model_config"][k] == v, k
    assert meta["converter_version"] == core.CONVERTER_VERSION
    assert all(leaf.dtype == np.float32 for _, leaf in _leaves(params))


def test_old_and_new_diffusers_keys_give_identical_params(fixtures_dir, tmp_path):
    for folder in DIFFUSERS_FILES:
        assert run(fixtures_dir / folder, "--out", tmp_path / folder) == 0
    a, _ = load_checkpoint(tmp_path / "diffusers_tiny")
    b, _ = load_checkpoint(tmp_path / "diffusers_tiny_oldkeys")
    la, lb = _leaves(a), _leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb))


def test_diffusers_pipeline_layout_reads_scheduler(fixtures_dir, tmp_path, capsys):
    pipe = tmp_path / "pipe"
    shutil.copytree(fixtures_dir / "diffusers_tiny", pipe / "unet")
    (pipe / "scheduler").mkdir()
    sched = {"_class_name": "DDPMScheduler", "beta_end": 0.03, "variance_type": "fixed_large"}
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    (pipe / "model_index.json").write_text("{}")
    assert run(pipe, "--out", tmp_path / "out") == 2
    assert f"pass {pipe / 'unet'}" in capsys.readouterr().err
    assert run(pipe / "unet", "--out", tmp_path / "out") == 0
    meta = json.loads((tmp_path / "out" / "jaxdiff.json").read_text())
    assert meta["diffusion"]["beta_end"] == 0.03 and meta["diffusion"]["beta_start"] == 1e-4
    assert meta["diffusion"]["variance_type"] == "fixed_large"
    assert meta["source"]["scheduler_config"] == "../scheduler/scheduler_config.json"
    sched = {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500}
    (pipe / "unet" / "scheduler_config.json").write_text(json.dumps(sched))  # beside wins
    diffusion, path = core.diffusers_diffusion(pipe / "unet")
    assert path == str(pipe / "unet" / "scheduler_config.json")
    assert diffusion["beta_schedule"] == "cosine" and "beta_start" not in diffusion
    assert diffusion["num_timesteps"] == 500 and diffusion["variance_type"] == "fixed_small"


@pytest.mark.parametrize(
    "name, fmt, variance",
    [("adm_tiny", "pt-zip", "learned_range"), ("adm_tiny_legacy", "pt-legacy", "fixed_large")],
)
def test_adm_with_config(fixtures_dir, tmp_path, capsys, name, fmt, variance):
    fixture = json.loads((fixtures_dir / f"{name}.json").read_text())
    src = fixtures_dir / f"{name}.pt"
    assert run(src, "--config", fixtures_dir / f"{name}.json", "--out", tmp_path / "out") == 0
    assert f"{fixture['num_parameters']:,} parameters" in capsys.readouterr().out
    params, meta = load_checkpoint(tmp_path / "out")
    assert meta["architecture"] == "adm"
    assert meta["num_parameters"] == fixture["num_parameters"]
    assert meta["source"] == {"file": f"{name}.pt", "sha256": fixture["sha256"], "format": fmt}
    assert fixture["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["diffusion"] == {**core.ADM_DIFFUSION, "variance_type": variance}
    for k in ("model_channels", "out_channels", "num_res_blocks", "num_heads", "resblock_updown"):
        assert meta["model_config"][k] == fixture["kwargs"][k], k
    assert list(meta["model_config"]["channel_mult"]) == fixture["kwargs"]["channel_mult"]


def test_adm_config_forms_agree(fixtures_dir, tmp_path, capsys):
    """create_model flags (DPS yaml style), and shapes + the invisible attention flags, give
    the same network as the UNetModel kwargs; shapes alone say which flags are missing."""
    fixture = json.loads((fixtures_dir / "adm_tiny.json").read_text())
    flags, extra = tmp_path / "flags.json", tmp_path / "extra.json"
    flags.write_text(json.dumps(fixture["dps_create_model_kwargs"]))
    invisible = ("num_heads", "num_head_channels", "use_new_attention_order", "image_size")
    extra.write_text(json.dumps({k: fixture["kwargs"][k] for k in invisible}))
    src = fixtures_dir / "adm_tiny.pt"
    assert run(src, "--config", fixtures_dir / "adm_tiny.json", "--out", tmp_path / "a") == 0
    assert run(src, "--config", flags, "--out", tmp_path / "b") == 0
    assert run(src, "--config", extra, "--out", tmp_path / "c") == 0
    (pa, ma), (pb, mb), (pc, mc) = (load_checkpoint(tmp_path / d) for d in "abc")
    from jaxdiff.models.adm import normalize_config

    assert normalize_config(ma["model_config"]) == normalize_config(mb["model_config"])
    assert normalize_config(ma["model_config"]) == normalize_config(mc["model_config"])
    for p in (pb, pc):
        assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(_leaves(pa), _leaves(p)))
    capsys.readouterr()
    _fails(capsys, tmp_path, src, match="attention settings are not visible in the weights")


@pytest.mark.parametrize("preset", ["ffhq256", "imagenet256_uncond"])
def test_preset_inferred_from_shapes(preset):
    from jaxdiff.convert import adm, presets

    shapes = adm.expected_torch_shapes(presets.PRESETS[preset])
    sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # no memory
    model_config, flags = core.adm_model_config(sd, None, None)
    assert model_config == presets.PRESETS[preset] and flags == {}
    n = sum(int(np.prod(s)) for s in shapes.values())
    assert n == {"ffhq256": 93_563_910, "imagenet256_uncond": 552_814_086}[preset]


def test_adm_diffusion_flags():
    from jaxdiff.diffusion import schedule_from_meta

    cfg = {"in_channels": 3, "out_channels": 3}
    d = core.adm_diffusion(cfg, {})
    assert d["variance_type"] == "fixed_large" and (d["beta_start"], d["beta_end"]) == (1e-4, 0.02)
    assert core.adm_diffusion({**cfg, "out_channels": 6}, {})["variance_type"] == "learned_range"
    d = core.adm_diffusion(cfg, {"diffusion_steps": 4000, "sigma_small": True})
    assert d["variance_type"] == "fixed_small" and d["num_timesteps"] == 4000
    assert np.isclose(d["beta_start"], 2.5e-5) and np.isclose(d["beta_end"], 0.005)
    cos = core.adm_diffusion(cfg, {"noise_schedule": "cosine"})
    assert cos["beta_schedule"] == "cosine" and "beta_start" not in cos
    for diffusion in (d, cos):  # the samplers' schedule builder takes what we write
        schedule_from_meta(diffusion)


def test_adm_model_output_after_conversion(fixtures_dir, tmp_path):
    from jaxdiff.models import load_pretrained

    src, cfg = fixtures_dir / "adm_tiny.pt", fixtures_dir / "adm_tiny.json"
    assert run(src, "--config", cfg, "--out", tmp_path / "out") == 0
    model, params, meta = load_pretrained(tmp_path / "out")
    io = np.load(fixtures_dir / "adm_tiny_io.npz")
    with jax.default_matmul_precision("highest"):
        out = jax.jit(model.apply)({"params": params}, io["x"].transpose(0, 2, 3, 1), io["t"])
    out = np.asarray(out).transpose(0, 3, 1, 2)
    assert out.shape == io["out"].shape
    err = np.abs(out - io["out"]).max()
    assert err <= 1e-5 * np.abs(io["out"]).max(), err


@pytest.mark.slow
def test_preset_sized_checkpoint_end_to_end(tmp_path, capsys):
    """A file shaped like DPS's ffhq_10m.pt (374 MB of zeros): preset found from the shapes,
    progress lines shown, every parameter stored."""
    from jaxdiff.convert import adm, presets

    shapes = adm.expected_torch_shapes(presets.PRESETS["ffhq256"])
    sd = {k: tensor(str(i), np.zeros(s, np.float32)) for i, (k, s) in enumerate(shapes.items())}
    write_zip(tmp_path / "ffhq_10m.pt", sd)
    del sd
    assert cli.main([str(tmp_path / "ffhq_10m.pt"), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "reading ffhq_10m.pt" in captured.err and "hashing ffhq_10m.pt" in captured.err
    assert "adm, 93,563,910 parameters from ffhq_10m.pt (pt-zip)" in captured.out
    meta = json.loads((tmp_path / "out" / "jaxdiff.json").read_text())
    assert meta["num_parameters"] == 93_563_910
    assert meta["model_config"]["model_channels"] == 128
    assert meta["diffusion"]["variance_type"] == "learned_range"


def test_module_entry_point(fixtures_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "convert_weights", str(fixtures_dir / "diffusers_tiny")]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: unet2d, 280,755 parameters")
    assert (out / "jaxdiff.json").is_file()


# -- bad input: exit status 1, a message naming the problem, nothing written ---------------------


def _fails(capsys, tmp_path, *argv, match):
    out = tmp_path / "out"
    assert run(*argv, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert_weights: error: ") and match in err, err
    assert not out.exists()
    return err


def test_truncated_checkpoint(fixtures_dir, tmp_path, capsys):
    data = (fixtures_dir / "adm_tiny_legacy.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    cfg = fixtures_dir / "adm_tiny_legacy.json"
    _fails(capsys, tmp_path, tmp_path / "cut.pt", "--config", cfg, match="cut.pt: storage")
    data = (fixtures_dir / "adm_tiny.pt").read_bytes()
    (tmp_path / "cut2.pt").write_bytes(data[:-100])
    _fails(capsys, tmp_path, tmp_path / "cut2.pt", match="cut2.pt: starts like a zip")


def test_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    _fails(capsys, tmp_path, tmp_path / "image.pt", match="image.pt: not a PyTorch checkpoint")
    (tmp_path / "notes.txt").write_text("hello")
    _fails(capsys, tmp_path, tmp_path / "notes.txt", match="notes.txt: unknown source")
    _fails(capsys, tmp_path, tmp_path / "missing.pt", match="missing.pt: no such file")


LFS = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 1672357\n".format("0" * 64)


def test_git_lfs_pointer_is_named(fixtures_dir, tmp_path, capsys):
    """A clone without git-lfs leaves pointer files: one line says so, not 'corrupt'."""
    (tmp_path / "model.pt").write_text(LFS)
    err = _fails(capsys, tmp_path, tmp_path / "model.pt", match="model.pt: a Git LFS pointer file")
    assert "not a PyTorch checkpoint" not in err and len(err.strip().splitlines()) == 1
    folder = tmp_path / "unet"
    folder.mkdir()
    shutil.copy(fixtures_dir / "diffusers_tiny" / "config.json", folder / "config.json")
    (folder / "diffusion_pytorch_model.safetensors").write_text(LFS)
    err = _fails(capsys, tmp_path, folder, match="safetensors: a Git LFS pointer file")
    assert "corrupt" not in err


def test_unknown_key_names_the_closest_entries(fixtures_dir, tmp_path, capsys):
    cfg = fixtures_dir / "adm_tiny.json"
    err = _fails(
        capsys, tmp_path, fixtures_dir / "adm_tiny.pt", "--config", cfg,
        "--key", "out.2.weigth", match="no entry 'out.2.weigth'",
    )  # fmt: skip
    assert "closest: ['out.2.weight'" in err
    assert "input_blocks.0.0.weight" not in err  # not every entry of the flat state dict


def test_forbidden_global(tmp_path, capsys):
    marker = tmp_path / "pwned"
    obj = {"w": tensor("0", np.ones(2, np.float32)), "x": Call("os.system", f"touch {marker}")}
    write_zip(tmp_path / "evil.pt", obj)
    _fails(capsys, tmp_path, tmp_path / "evil.pt", match="refused to load global 'os.system'")
    assert not marker.exists()


def test_checkpoint_of_another_architecture(fixtures_dir, tmp_path, capsys):
    err = _fails(
        capsys, tmp_path, fixtures_dir / "adm_tiny.pt", "--preset", "ffhq256", match="missing keys"
    )
    assert "does not match the architecture" in err and "shape mismatch" in err
    # the legacy net's weights under the zip net's architecture: shapes disagree
    err = _fails(
        capsys,
        tmp_path,
        fixtures_dir / "adm_tiny_legacy.pt",
        "--config",
        fixtures_dir / "adm_tiny.json",
        match="does not match the architecture",
    )
    with pytest.raises(SystemExit):  # --preset and --config are exclusive (argparse usage error)
        cli.main(["x.pt", "--preset", "ffhq256", "--config", "c.json", "--out", "o"])


def test_diffusers_folder_problems(fixtures_dir, tmp_path, capsys):
    folder = tmp_path / "noconfig"
    folder.mkdir()
    shutil.copy(fixtures_dir / "diffusers_tiny/diffusion_pytorch_model.safetensors", folder)
    _fails(capsys, tmp_path, folder, match=f"{folder}: a folder without config.json")
    _fails(
        capsys,
        tmp_path,
        fixtures_dir / "diffusers_tiny",
        "--preset",
        "ffhq256",
        match="--preset/--config apply to ADM checkpoints",
    )
    broken = tmp_path / "broken"
    shutil.copytree(fixtures_dir / "diffusers_tiny", broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    _fails(capsys, tmp_path, broken, match="diffusion_pytorch_model.safetensors: corrupt")


def test_existing_out_needs_force(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run(fixtures_dir / "diffusers_tiny", "--out", out) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert run(fixtures_dir / "diffusers_tiny", "--out", out, "--force") == 2  # not a checkpoint
    assert os.listdir(out) == ["keep.txt"]
    shutil.rmtree(out)
    assert run(fixtures_dir / "diffusers_tiny", "--out", out) == 0
    assert run(fixtures_dir / "diffusers_tiny_oldkeys", "--out", out, "--force") == 0
    assert load_checkpoint(out)[1]["source"]["format"] == "pt-zip"
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_conversion_leaves_no_dir(fixtures_dir, tmp_path, capsys, monkeypatch, exc):
    real_save = ocp.StandardCheckpointer.save

    def save_then_fail(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        self.wait_until_finished()
        assert any(path.iterdir())  # something half-written really exists
        raise exc

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save_then_fail)
    argv = (fixtures_dir / "diffusers_tiny", "--out", tmp_path / "out")
    if isinstance(exc, KeyboardInterrupt):  # one line, exit status 130
        assert run(*argv) == 130
        assert capsys.readouterr().err.strip().endswith("interrupted (SIGINT); nothing written")
    else:
        assert run(*argv) == 2
        assert "disk full" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("byte, match", [(0xFF, "non-finite"), (0x7E, "above 100000")])
def test_corrupted_weights_are_refused(fixtures_dir, tmp_path, capsys, byte, match):
    """400 bytes of the safetensors data overwritten: NaNs (0xFF) or 8e37s (0x7E) used to
    convert with exit 0."""
    src = tmp_path / "damaged"
    shutil.copytree(fixtures_dir / "diffusers_tiny", src)
    weights = src / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1000:-600] = bytes([byte]) * 400  # the tensor data, past the JSON header
    weights.write_bytes(bytes(raw))
    err = _fails(capsys, tmp_path, src, match=match)
    assert "tensor(s): [" in err and "corrupt" in err  # names the tensors
    if byte == 0x7E:  # a legitimate-but-huge checkpoint can still be converted on request
        assert run(src, "--out", tmp_path / "out", "--allow_large_weights") == 0


# The signals as an interactive shell delivers them: a disposition or a blocked mask left by the
# test process (both survive exec) would keep them from the conversion, and the test would hang.
_SLOW_SAVE = """
import signal, sys, time
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
signal.signal(signal.SIGINT, signal.default_int_handler)
import orbax.checkpoint as ocp
def slow_save(self, *a, **k):
    print("saving", flush=True)
    time.sleep(600)  # far past the parent's wait: only the signal can end it in time
ocp.StandardCheckpointer.save = slow_save
from convert_weights.cli import main
sys.argv = ["convert_weights", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_interrupted_conversion_cleans_up_and_says_one_line(fixtures_dir, tmp_path, sig):
    import signal

    out = tmp_path / "out"
    argv = [sys.executable, "-c", _SLOW_SAVE, str(fixtures_dir / "diffusers_tiny"), "--out", out]
    proc = subprocess.Popen(
        [str(a) for a in argv + ["--quiet"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert proc.stdout.readline().strip() == "saving"  # inside save_pretrained's temporary
    assert list(tmp_path.glob(".out.tmp-*"))
    proc.send_signal(getattr(signal, sig))
    try:
        _, err = proc.communicate(timeout=180)  # generous: on a loaded CI machine exit is slow
    finally:
        proc.kill()  # no-op once it has exited; never leave the sleeping child behind
    assert proc.returncode == 130
    assert err.strip() == f"convert_weights: interrupted ({sig}); nothing written"
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
