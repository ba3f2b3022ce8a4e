"""The driver never fails silently: a bad config or input fails before anything is written, one
workdir has one writer, every input file gets its own outputs and is recomputed when its content
changes, outputs follow the umask, and diverged images are named and kept out of the means."""

# ruff: noqa: F811 (pytest fixtures imported from test_reproduce)
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.errors import ConfigError, RunLockedError
from jaxdiff.runs import run
from jaxdiff.workdir import RESULTS, WorkdirLock, image_path
from tests.test_reproduce import FIXTURES, PHOTOS, REPO, config, records, tiny_model  # noqa: F401


@pytest.fixture
def two_images(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(FIXTURES / PHOTOS[0], d / "img.png")
    jdata.save_png(d / "other.png", jdata.load_image(FIXTURES / PHOTOS[1], 32))
    return d


def _cfg(model, data, **over):
    return config("dps", "box", model, data, respacing="2", **over)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"batch_size": -2}, "batch_size=-2 must be an integer >= 0"),
        ({"seed": 2**32}, r"seed=4294967296 must be an integer in \[0, 2\^32\)"),
        ({"metrics.lpips_net": "vgg19"}, "metrics.lpips_net='vgg19'"),
        ({"metrics.range": "foo"}, "metrics.range='foo' must be 'clip' or 'minmax'"),
        ({"sampler.respacing": "ten"}, "respacing 'ten'"),
    ],
)
def test_a_bad_config_fails_before_anything_is_written(
    tmp_path, tiny_model, two_images, over, match
):
    c = _cfg(tiny_model, two_images)
    for key, value in over.items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    with pytest.raises((ConfigError, ValueError), match=match):
        run(c, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "config.json").exists()
    assert not (tmp_path / "w" / RESULTS).exists()


def test_an_empty_folder_writes_nothing_and_the_corrected_command_runs(
    tmp_path, tiny_model, two_images
):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no decodable images"):
        run(_cfg(tiny_model, tmp_path / "empty"), tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "config.json").exists()
    s = run(_cfg(tiny_model, two_images), tmp_path / "w", progress=False)  # same workdir
    assert s["num_images"] == 2


def test_one_writer_per_workdir(tmp_path, tiny_model, two_images):
    with WorkdirLock(tmp_path / "w"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            run(_cfg(tiny_model, two_images), tmp_path / "w", progress=False)
    run(_cfg(tiny_model, two_images), tmp_path / "w", progress=False)  # released


def test_outputs_per_input_file_content_fingerprints_and_umask(tmp_path, tiny_model, two_images):
    shutil.copy(FIXTURES / PHOTOS[2], two_images / "img.jpg")  # same stem as img.png
    c = _cfg(tiny_model, two_images)
    old = os.umask(0o022)
    try:
        run(c, tmp_path / "w", progress=False)
    finally:
        os.umask(old)
    recs = records(tmp_path / "w")
    assert sorted(recs) == ["img.jpg", "img.png", "other.png"]
    stems = {n: r["output"] for n, r in recs.items()}
    assert stems == {"img.jpg": "img_jpg", "img.png": "img_png", "other.png": "other"}
    truth = {n: jdata.load_image(image_path(tmp_path / "w", n, "truth", stems)) for n in recs}
    assert np.abs(truth["img.jpg"] - truth["img.png"]).max() > 0.1  # two images, two sets
    for f in ("results.jsonl", "config.json", "summary.json", "images/other_recon.png"):
        assert (tmp_path / "w" / f).stat().st_mode & 0o777 == 0o644, f
    # the same name with another picture: recomputed on resume, not trusted by its name
    before = recs["other.png"]
    jdata.save_png(two_images / "other.png", np.flip(jdata.load_image(two_images / "other.png"), 0))
    run(c, tmp_path / "w", progress=False)
    after = records(tmp_path / "w")
    assert after["other.png"]["image_sha256"] != before["image_sha256"]
    assert after["other.png"]["metrics"] != before["metrics"]
    assert after["img.png"] == recs["img.png"]  # unchanged images are not redone


def test_corrupt_run_files_are_named(tmp_path, tiny_model, two_images):
    c = _cfg(tiny_model, two_images)
    run(c, tmp_path / "w", progress=False)
    (tmp_path / "w" / RESULTS).write_text('{"image": "img.png", "ind')
    with pytest.raises(ConfigError, match=r"results.jsonl: line 1 is not a result record"):
        run(c, tmp_path / "w", progress=False)
    (tmp_path / "w" / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"config.json: corrupt JSON"):
        run(c, tmp_path / "w", progress=False)


def test_diverged_images_are_named_and_kept_out_of_the_means(
    tmp_path,
    tiny_model,
    two_images,
):
    from jaxdiff.experiment import build

    c = _cfg(tiny_model, two_images)
    exp = build(c)  # past the config's range check: inf in float32, the first step non-finite
    exp.method.hparams["scale"] = 1e39
    s = run(c, tmp_path / "w", exp=exp, progress=False)
    assert sorted(s["diverged"]) == ["img.png", "other.png"]
    assert s["metrics"]["psnr"]["n"] == 0 and s["metrics"]["psnr"]["mean"] is None
    assert "diverged" in (tmp_path / "w" / "summary.md").read_text()
    assert all(r["diverged_at"] >= 0 for r in records(tmp_path / "w").values())


def _reproduce(*args):
    return subprocess.run(
        [sys.executable, "-m", "scripts.reproduce", *map(str, args), "--noprogress"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_command_line_errors_are_one_line_with_exit_2(tmp_path, two_images):
    r = _reproduce(
        "--config=configs/dps.py:box",
        f"--config.data={two_images}",
        "--config.batch_size=-2",
        f"--workdir={tmp_path / 'w'}",
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("reproduce: error: invalid config")
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_run_with_diverged_images_exits_3_after_writing_everything(tmp_path, two_images):
    r = _reproduce(
        "--config=configs/score_ald.py:box",  # the top of its weight range, 20 steps
        f"--config.data={two_images}",
        "--config.sampler.respacing=20",
        "--config.sampler.hparams.weight=100",
        f"--workdir={tmp_path / 'w'}",
    )
    assert r.returncode == 3, r.stderr
    assert "2 of 2 images diverged" in r.stdout
    assert len((tmp_path / "w" / RESULTS).read_text().splitlines()) == 2
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["diverged"]


@pytest.mark.slow
def test_batch_size_moves_a_result_by_float32_rounding_only(tiny_model):
    """The stated guarantee (README, 'When something goes wrong'): bitwise at equal batch size
    and device count (tests/test_reproduce.py), and across batch sizes within float32 rounding
    amplified by the chain: 10 DPS steps on the fixture UNet, image 0 alone vs in a batch of 4."""
    import jax

    from jaxdiff.diffusion import schedule_from_meta
    from jaxdiff.models import load_pretrained, model_fn
    from jaxdiff.operators import get_noise, get_operator
    from jaxdiff.samplers import batched, get_sampler

    model, params, meta = load_pretrained(tiny_model)
    op = get_operator("gaussian_blur", image_shape=(32, 32, 3), kernel_size=9, std=1.0)
    sample = get_sampler("dps")(
        model_fn(model),
        schedule_from_meta(meta["diffusion"], "10"),
        operator=op,
        noise=get_noise("gaussian", sigma=0.05),
        scale=0.5,
    )
    run_b = jax.jit(batched(sample))
    keys = jax.random.split(jax.random.key(0), 4)
    x = np.stack([jdata.load_image(FIXTURES / p, 32) for p in (*PHOTOS, PHOTOS[0])])
    op_params = jax.vmap(op.sample)(keys)
    y = jax.vmap(op.apply)(op_params, x)
    first = jax.tree.map(lambda a: a[:1], op_params)
    one = np.asarray(run_b(params, keys[:1], y[:1], first).x0[0])
    four = np.asarray(run_b(params, keys, y, op_params).x0[0])
    diff = np.abs(one - four)
    # measured: max 1.7e-5, mean 9e-7 (enough to flip a few 8-bit pixels by 1/255)
    assert diff.max() < 2e-4 and diff.mean() < 1e-5
