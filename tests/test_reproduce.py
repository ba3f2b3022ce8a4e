"""The driver: end-to-end runs on the fixture-sized model (adm_tiny, 32x32), resumability after a
kill, undecodable images, per-image keys, host-side baselines; the whole grid (slow)."""

from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import baselines as baseline_configs
from jaxdiff import data as jdata
from jaxdiff import tasks
from jaxdiff.baselines import APPLIES
from jaxdiff.runs import run
from jaxdiff.workdir import RESULTS, image_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PHOTOS = ("op_image0_astronaut.png", "metric_clean_coffee.png", "lpips_ex_ref.png")
STEPS = "30"  # enough work per image that the kill lands half-way


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """adm_tiny.pt converted with the project's converter (random weights, learned sigma)."""
    from jaxdiff.convert.core import convert

    out = tmp_path_factory.mktemp("model") / "adm_tiny"
    convert(FIXTURES / "adm_tiny.pt", out, config=FIXTURES / "adm_tiny.json", progress=False)
    return out


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Three photos and, sorted first, a file that is not an image."""
    d = tmp_path_factory.mktemp("images")
    for i, name in enumerate(PHOTOS):
        shutil.copy(FIXTURES / name, d / f"img{i}_{name}")
    (d / "img0a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return d


def config(method: str, task: str, model, data, **over):
    if method in ("ddpm", "tweedie", "sdedit", "score_ald", "dps"):
        c = importlib.import_module(f"configs.{method}").get_config(task)
        c.sampler.respacing = over.pop("respacing", "3")
        if method == "sdedit":  # t0 0.4 of 3 respaced steps would leave one step
            c.sampler.hparams.t0 = c.sampler.options.max_t0 = 1.0
    else:
        c = baseline_configs.get_config(f"{method},{task}")
    c.model, c.data = str(model), str(data)
    for k, v in over.items():
        setattr(c, k, v)
    return c


def records(workdir) -> dict:
    lines = (workdir / RESULTS).read_text().splitlines()
    return {r["image"]: r for r in map(json.loads, lines)}


def test_run_writes_every_output_and_skips_a_corrupt_image(tmp_path, tiny_model, image_dir, caplog):
    c = config("score_ald", "random", tiny_model, image_dir, respacing=STEPS)
    with caplog.at_level(logging.WARNING, logger="jaxdiff.images"):
        s = run(c, tmp_path / "w", progress=False)
    assert "img0a_corrupt.png" in caplog.text  # named in a warning ...
    assert list(s["skipped"]) == ["img0a_corrupt.png"]  # ... and in the summary
    recs = records(tmp_path / "w")
    names = sorted(recs)
    assert names == sorted(f"img{i}_{n}" for i, n in enumerate(PHOTOS))
    # index = position in the sorted folder listing, corrupt file included (keys never shift)
    assert [recs[n]["index"] for n in names] == [0, 2, 3]
    for r in recs.values():
        assert set(r["metrics"]) == {"psnr", "ssim", "lpips"}
        assert all(np.isfinite(v) for v in r["metrics"].values())
        assert r["seed"] == 0 and r["seconds"] > 0 and r["diverged_at"] == -1
    for n in names:
        for kind, shape in (("truth", (32, 32, 3)), ("measurement", (32, 32, 3)), ("recon", None)):
            img = jdata.load_image(image_path(tmp_path / "w", n, kind))
            assert shape is None or img.shape == shape
    truth = jdata.load_image(image_path(tmp_path / "w", names[0], "truth"))
    want = jdata.load_image(image_dir / names[0], 32)
    np.testing.assert_allclose(truth, want, atol=1 / 127.5)  # centre-cropped, resized to 32
    psnr = [recs[n]["metrics"]["psnr"] for n in names]
    assert s["metrics"]["psnr"]["mean"] == pytest.approx(np.mean(psnr))
    assert s["metrics"]["psnr"]["std"] == pytest.approx(np.std(psnr))
    assert s["method_info"]["num_steps"] == int(STEPS) and s["num_images"] == 3
    assert s["effective_task"]["operator_config"] == {"mask_prob_range": [0.3, 0.7]}
    md = (tmp_path / "w" / "summary.md").read_text()
    assert "PSNR" in md and "img0a_corrupt.png" in md and f'"respacing": "{STEPS}"' in md
    assert jdata.load_image(tmp_path / "w" / "figure.png").shape[1] > 3 * 32  # 3 columns
    # a restart finds everything done and changes nothing
    before = (tmp_path / "w" / RESULTS).read_text()
    run(c, tmp_path / "w", progress=False)
    assert (tmp_path / "w" / RESULTS).read_text() == before
    # a different config refuses the workdir, naming what changed
    c.sampler.hparams.weight = 2.0
    with pytest.raises(ValueError, match="sampler.hparams.weight"):
        run(c, tmp_path / "w", progress=False)


def test_kill_and_restart_equals_an_uninterrupted_run(tmp_path, tiny_model, image_dir):
    """`python -m scripts.reproduce` (1 device, batch 1) is SIGKILLed after its first image; the
    restart (here in-process: 8 devices, batch 8) skips the finished images and completes; the
    results equal an uninterrupted run's."""
    data = tmp_path / "data"  # six images, so that the kill lands half-way
    shutil.copytree(image_dir, data)
    for i, name in enumerate(PHOTOS):
        shutil.copy(data / f"img{i}_{name}", data / f"img{i + 3}_{name}")
    workdir = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "scripts.reproduce",
        "--config=configs/score_ald.py:random",
        f"--workdir={workdir}",
        f"--config.model={tiny_model}",
        f"--config.data={data}",
        f"--config.sampler.respacing={STEPS}",
        "--config.batch_size=1",
        "--progress=false",
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (workdir / RESULTS).exists():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = records(workdir)
    assert 1 <= len(done) < 6, "the kill should land after the first image and before the last"
    c = config("score_ald", "random", tiny_model, data, respacing=STEPS)
    c.batch_size = 1  # as on the command line (batch size does not change results)
    run(c, workdir, progress=False)
    resumed = records(workdir)
    assert len(resumed) == 6
    for name, rec in done.items():  # finished images were skipped, not recomputed
        assert resumed[name] == rec
    c.batch_size = 0
    run(c, tmp_path / "straight", progress=False)
    straight = records(tmp_path / "straight")
    assert sorted(straight) == sorted(resumed)
    for name in straight:
        a, b = straight[name]["metrics"], resumed[name]["metrics"]
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (name, k)
        for kind in ("measurement", "recon"):
            x = jdata.load_image(image_path(tmp_path / "straight", name, kind))
            y = jdata.load_image(image_path(workdir, name, kind))
            assert np.max(np.abs(x - y)) <= 1.01 / 127.5, (name, kind)
    # images 0 and 3 are the same photo under different keys: different masks and results
    m0 = jdata.load_image(image_path(workdir, f"img0_{PHOTOS[0]}", "measurement"))
    m3 = jdata.load_image(image_path(workdir, f"img3_{PHOTOS[0]}", "measurement"))
    assert np.mean(np.abs(m0 - m3)) > 0.05


def test_result_depends_on_seed_and_image_alone(tmp_path, tiny_model, image_dir):
    """The first image alone (num_images=1) equals the first image of the full run."""
    c = config("measurement", "random", tiny_model, image_dir)
    full = run(c, tmp_path / "a", progress=False)
    one = config("measurement", "random", tiny_model, image_dir, num_images=1)
    run(one, tmp_path / "b", progress=False)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    (name,) = b
    assert full["num_images"] == 3
    for kind in ("measurement", "recon"):  # the same draws, bit for bit
        np.testing.assert_array_equal(
            jdata.load_image(image_path(tmp_path / "a", name, kind)),
            jdata.load_image(image_path(tmp_path / "b", name, kind)),
        )
    for k, v in a[name]["metrics"].items():  # (metrics batched differently: float rounding)
        assert b[name]["metrics"][k] == pytest.approx(v, rel=1e-6)
    other_seed = config("measurement", "random", tiny_model, image_dir, num_images=1, seed=1)
    run(other_seed, tmp_path / "c", progress=False)
    assert records(tmp_path / "c")[name]["metrics"] != b[name]["metrics"]


@pytest.mark.slow  # 10-50 s: kept out of the default run's 10 minutes
def test_host_side_baseline_runs_through_the_driver(tmp_path, tiny_model, image_dir):
    s = run(config("telea", "box", tiny_model, image_dir), tmp_path / "t", progress=False)
    m = run(config("measurement", "box", tiny_model, image_dir), tmp_path / "m", progress=False)
    assert s["method_kind"] == "baseline" and s["num_images"] == 3
    # Telea fills the hole from its surroundings: better than the measurement (noise in the hole)
    assert s["metrics"]["psnr"]["mean"] > m["metrics"]["psnr"]["mean"] + 1
    # the measurements are the same draws (same keys) whichever method reconstructs them
    for name in records(tmp_path / "t"):
        a = jdata.load_image(image_path(tmp_path / "t", name, "measurement"))
        b = jdata.load_image(image_path(tmp_path / "m", name, "measurement"))
        np.testing.assert_array_equal(a, b)


def test_unknown_method_and_missing_model(tmp_path, tiny_model, image_dir):
    from jaxdiff.experiment import build

    c = config("measurement", "box", tiny_model, image_dir)
    c.method = "nope"
    with pytest.raises(KeyError, match="unknown method 'nope'.*dps"):
        build(c)
    c = config("measurement", "box", tmp_path / "no_model", image_dir)
    with pytest.raises(FileNotFoundError, match="convert_weights"):
        build(c)


GRID_TASKS = ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "denoise", "colorize")
DIFFUSION = ("ddpm", "tweedie", "sdedit", "score_ald", "dps")


def _grid():
    pairs = [(m, t) for t in GRID_TASKS for m in DIFFUSION]
    pairs += [(b, t) for b, ts in APPLIES.items() for t in ts if t in GRID_TASKS]
    pairs += [(m, "phase_retrieval") for m in ("dps", "score_ald", "measurement")]
    return pairs


def test_grid_covers_every_method_and_task():
    pairs = _grid()
    assert {t for _, t in pairs} == set(tasks.TASKS)
    assert {m for m, _ in pairs} >= set(DIFFUSION) | set(APPLIES)


@pytest.mark.slow
@pytest.mark.parametrize("method,task", _grid())
def test_whole_grid_end_to_end(tmp_path, tiny_model, image_dir, method, task):
    c = config(method, task, tiny_model, image_dir, num_images=2, respacing="2")
    s = run(c, tmp_path / "w", progress=False)
    assert s["num_images"] == 2 and not s["diverged"]
    for k in ("psnr", "ssim"):
        assert np.isfinite(s["metrics"][k]["mean"])


def test_measurement_is_the_noise_models_sample(tiny_model, image_dir):
    """The pipeline's traced-sigma Gaussian noise draws exactly what get_noise's sample does."""
    import jax

    from jaxdiff.experiment import build
    from jaxdiff.images import load_images
    from jaxdiff.operators import get_noise

    exp = build(config("measurement", "random", tiny_model, image_dir))
    x = load_images(str(image_dir), 32, 1).arrays[0]
    key = jax.random.PRNGKey(3)
    y, op_params, _ = exp.pipeline().measure(key, x, exp.default_hparams())
    k_op, k_noise, _ = jax.random.split(key, 3)
    ax = exp.operator.apply(exp.operator.sample(k_op), x)
    want = get_noise("gaussian", sigma=0.05).sample(k_noise, ax)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    assert exp.default_hparams()["noise_sigma"] == 0.05


def test_measurement_floor_shows_sr_pixels_as_blocks_and_sdedit_starts_from_bicubic():
    """The "measurement" method is no reconstruction at all: a low-resolution y is shown with
    nearest-neighbour pixels (the bicubic baseline is a separate row); SDEdit's guide is bicubic."""
    import jax
    import jax.numpy as jnp

    from jaxdiff.experiment import _measurement_method, measurement_as_image

    y = jax.random.uniform(jax.random.key(0), (8, 8, 3), minval=-1, maxval=1)
    floor, _ = _measurement_method((16, 16, 3)).fn(None, None, y, {}, {}, True)
    np.testing.assert_array_equal(floor, jnp.repeat(jnp.repeat(y, 2, 0), 2, 1))
    guide = measurement_as_image(y, (16, 16, 3))
    np.testing.assert_allclose(guide, jax.image.resize(y, (16, 16, 3), "cubic"))
    assert float(jnp.max(jnp.abs(guide - floor))) > 0.1
    same = jnp.zeros((16, 16, 3))  # image-shaped measurements (blur, inpainting) pass through
    assert measurement_as_image(same, (16, 16, 3), "nearest") is same
