"""DDPM trajectory parity with the official PyTorch samplers (fixture README part (c)): every
recorded draw is replayed, every x_t compared. The models are converted from the .pt / diffusers
folder beside the fixtures by the replay itself (the path `python -m jaxdiff.parity` takes)."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxdiff.parity import common, ddpm
from jaxdiff.parity.__main__ import main


def test_learned_sigma_adm_trajectory(fixtures_dir):
    """guided-diffusion, respacing "20", learned_range, clip_denoised: x_t within 1e-3 (the
    requirement; measured 1.4e-5, growing from 3e-6 at the first step)."""
    with jax.default_matmul_precision("highest"):
        r = ddpm.replay(fixtures_dir / "ddpm_learned_sigma.npz")
    assert r["pass"], r
    assert r["arrays"]["x_t"]["max_abs_err"] < 1e-4
    assert r["arrays"]["log_variance"]["max_abs_err"] < 1e-3
    assert r["num_steps"] == 20 and r["variance_type"] == "learned_range"


def test_fixed_small_diffusers_trajectory_through_the_cli(fixtures_dir, capsys):
    """diffusers DDPMPipeline: float32 schedule, "leading" spacing, fixed_small, 19 draws."""
    with jax.default_matmul_precision("highest"):
        assert main([str(fixtures_dir / "ddpm_fixed_small.npz")]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    r = json.loads(line)
    assert r["pass"] and r["kind"] == "ddpm" and r["variance_type"] == "fixed_small"
    assert r["arrays"]["x_t"]["max_abs_err"] < 1e-4
    assert r["arrays"]["model_output"]["max_abs_err"] < 1e-4
    assert len(r["arrays"]["x_t"]["per_step_max_abs_err"]) == 20


def test_cli_reports_errors_one_line_per_file(fixtures_dir, tmp_path, capsys):
    lone = tmp_path / "ddpm_fixed_small.npz"  # no model beside it, no --model
    shutil.copy(fixtures_dir / "ddpm_fixed_small.npz", lone)
    shutil.copy(fixtures_dir / "ddpm_fixed_small.json", tmp_path / "ddpm_fixed_small.json")
    shutil.copy(fixtures_dir / "ddpm_fixed_small.npz", tmp_path / "ddpm_nojson.npz")
    files = [lone, tmp_path / "ddpm_nojson.npz"]
    assert main([str(f) for f in files]) == 1  # fixtures that fail: one line each, status 1
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and not any(r["pass"] for r in lines)
    assert "--model" in lines[0]["error"]
    assert "sidecar" in lines[1]["error"]
    # bad usage (a missing file, a file of no fixture kind): one line on stderr, status 2, and
    # nothing replayed
    for bad, why in ((tmp_path / "missing.npz", "no such file"),
                     (fixtures_dir / "dps.json", "unknown fixture kind")):  # fmt: skip
        assert main([str(lone), str(bad)]) == 2
        out = capsys.readouterr()
        assert out.out == "" and why in out.err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddpm_learned_sigma", "ddpm_fixed_small"])
def test_float64_replay_matches_the_reference_float64_replay(fixtures_dir, name):
    """In float64 the error against the float32 reference is the reference's own float32 noise:
    per step it matches the sidecar's torch float64-vs-float32 numbers (so our float64 sampler
    agrees with torch's float64 run far below float32 resolution)."""
    r = ddpm.replay(fixtures_dir / f"{name}.npz", dtype="float64")
    assert r["pass"], r
    ours = np.array(r["arrays"]["x_t"]["per_step_max_abs_err"])
    ref = np.array(r["reference_f64_replay_max_abs_diff_x_t_per_step"])
    assert ours.max() < 1e-5
    np.testing.assert_allclose(ours, ref, rtol=0.15, atol=5e-7)


@pytest.mark.slow
def test_replay_reads_every_setting_from_the_files(fixtures_dir, tmp_path):
    """A held-out-style file: same layout, other settings (respacing "7", batch 3, no clipping),
    written by jaxdiff's own sampler. The replay must rebuild those settings from the files."""
    import jax.numpy as jnp

    from jaxdiff.diffusion import make_schedule
    from jaxdiff.samplers import batched, get_sampler

    model_dir = common.convert_beside(fixtures_dir / "ddpm_learned_sigma.npz", "adm_tiny")
    fn, params, _ = common.load_model(fixtures_dir / "x.npz", model_dir, None, jnp.float32)
    sched = make_schedule(1000, respacing="7", variance_type="learned_range")
    x_T = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    noise = jax.random.normal(jax.random.key(1), (3, 7, 32, 32, 3))
    sample = get_sampler("ddpm")(
        fn, sched, image_shape=(32, 32, 3), clip_denoised=False, keep_trajectory=True
    )
    with jax.default_matmul_precision("highest"):
        res = jax.jit(batched(sample))(
            params,
            jax.random.split(jax.random.key(2), 3),
            None,
            None,
            None,
            {"x_T": x_T, "noise": noise},
        )
    nchw = lambda a: np.moveaxis(np.asarray(a), -1, -3)  # noqa: E731
    steps_first = lambda a: np.swapaxes(nchw(a), 0, 1)  # noqa: E731
    np.savez(
        tmp_path / "ddpm_heldout.npz",
        x_T=nchw(x_T),
        noise=steps_first(noise),
        x_t=steps_first(res.trajectory["x"]),
        pred_xstart=steps_first(res.trajectory["x0_hat"]),
        log_variance=steps_first(res.trajectory["log_variance"]),
        timestep_map=sched.timestep_map,
        betas=sched.betas,
    )
    sidecar = {
        "steps": 1000,
        "noise_schedule": "linear",
        "timestep_respacing": "7",
        "learn_sigma": True,
        "clip_denoised": False,
        "model": "adm_tiny",
    }
    (tmp_path / "ddpm_heldout.json").write_text(json.dumps(sidecar))
    r = ddpm.replay(tmp_path / "ddpm_heldout.npz", model_dir)
    assert r["pass"] and r["num_steps"] == 7 and r["batch"] == 3, r
    assert r["arrays"]["x_t"]["max_abs_err"] < 1e-5
