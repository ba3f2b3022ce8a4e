"""jaxdiff.sweep: every value in one compiled call; per-value results equal separate runs."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.runner import FUN_NAME
from jaxdiff.runs import run
from jaxdiff.sweep import parse_sweep, run_sweep
from jaxdiff.workdir import image_path
from tests.test_reproduce import config, image_dir, records, tiny_model  # noqa: F401 (fixtures)


class CompileCounter:
    """Counts XLA compilations of the experiment's batch program (jax.monitoring events)."""

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **kw):
        if (
            self.active
            and event == "/jax/core/compile/backend_compile_duration"
            and kw.get("fun_name") == f"jit({FUN_NAME})"
        ):
            self.count += 1

    def __enter__(self):
        self.count, self.active = 0, True
        return self

    def __exit__(self, *exc):
        self.active = False


def test_sweep_compiles_once_and_equals_separate_runs(tmp_path, tiny_model, image_dir):  # noqa: F811
    values = [0.25, 1.0, 4.0]
    c = config("score_ald", "gaussian_blur", tiny_model, image_dir, respacing="4")
    with CompileCounter() as counter:
        r = run_sweep(c, tmp_path / "sweep", "weight", values, progress=False)
    assert counter.count == 1  # three values, one program
    assert r["values"] == values and r["num_images"] == 3
    lpips = {row["value"]: row["lpips"]["mean"] for row in r["rows"]}
    assert r["best"] == min(lpips, key=lpips.get)
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert f"weight = {r['best']:g}**" in md
    assert len((tmp_path / "sweep" / "sweep.csv").read_text().splitlines()) == 1 + len(values)
    for f in ("sweep.png", "sweep_grid.png"):
        assert jdata.load_image(tmp_path / "sweep" / f).ndim == 3
    swept = [json.loads(x) for x in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert len(swept) == 3 * len(values)
    for v in (0.25, 4.0):  # separate runs at two of the values
        cv = config("score_ald", "gaussian_blur", tiny_model, image_dir, respacing="4")
        cv.sampler.hparams.weight = v
        run(cv, tmp_path / f"run{v}", progress=False)
        single = records(tmp_path / f"run{v}")
        for rec in (s for s in swept if s["value"] == v):
            want = single[rec["image"]]["metrics"]
            for k in want:
                assert rec["metrics"][k] == pytest.approx(want[k], rel=1e-4, abs=1e-5)
            stem = rec["image"].rsplit(".", 1)[0]
            a = jdata.load_image(tmp_path / "sweep" / "images" / f"{stem}_{v:g}.png")
            b = jdata.load_image(image_path(tmp_path / f"run{v}", rec["image"], "recon"))
            assert np.max(np.abs(a - b)) <= 1.01 / 127.5
    # the values differ (the weight is really applied)
    means = [row["psnr"]["mean"] for row in r["rows"]]
    assert max(means) - min(means) > 1e-3


@pytest.mark.slow  # two sweep compiles (~15 s)
def test_sdedit_t0_and_noise_sigma_sweeps(tmp_path, tiny_model, image_dir):  # noqa: F811
    c = config("sdedit", "denoise", tiny_model, image_dir, respacing="4", num_images=1)
    c.sampler.options.max_t0 = c.sampler.hparams.t0 = 0.3
    with CompileCounter() as counter:
        r = run_sweep(c, tmp_path / "t0", "t0", [0.5, 1.0], progress=False)
    assert counter.count == 1
    assert r["config"]["sampler"]["options"]["max_t0"] == 1.0  # the scan covers the largest t0
    assert r["rows"][0]["psnr"]["mean"] != r["rows"][1]["psnr"]["mean"]
    m = config("measurement", "denoise", tiny_model, image_dir, num_images=2)
    with CompileCounter() as counter:
        s = run_sweep(m, tmp_path / "sig", "noise_sigma", [0.01, 0.1, 0.5], progress=False)
    assert counter.count == 1
    # the swept sigma reaches the measurement: PSNR of y = x + sigma z is ~ 20 log10(2 / sigma)
    # (less at 0.5, where clipping to [-1, 1] removes part of the noise)
    psnr = [row["psnr"]["mean"] for row in s["rows"]]
    assert psnr[:2] == pytest.approx([46.0, 26.0], abs=1.5) and psnr[2] < psnr[1] - 8


def test_parse_sweep_and_bad_names(tmp_path, tiny_model, image_dir):  # noqa: F811
    assert parse_sweep("scale:0.1,0.3,1,3") == ("scale", [0.1, 0.3, 1.0, 3.0])
    for bad in ("scale", "scale:", ":1,2", "scale:a,b"):
        with pytest.raises(ValueError, match="sweep"):
            parse_sweep(bad)
    c = config("measurement", "box", tiny_model, image_dir)
    with pytest.raises(ValueError, match="not traced.*noise_sigma"):
        run_sweep(c, tmp_path / "x", "lam", [1.0, 2.0], progress=False)


@pytest.mark.slow  # one DPS sweep compile (~30 s)
def test_dps_scale_sweep_differentiates_through_the_network(tmp_path, tiny_model, image_dir):  # noqa: F811
    """The README's sweep (DPS's scale): values x images x the gradient through the UNet, one
    program (a sweep of DPS once failed to batch the network's weight-gradient convolution)."""
    c = config("dps", "box", tiny_model, image_dir, respacing="2", num_images=2)
    r = run_sweep(c, tmp_path / "dps", "scale", [0.0, 50.0], progress=False)
    psnr = [row["psnr"]["mean"] for row in r["rows"]]
    assert all(np.isfinite(psnr)) and psnr[0] != psnr[1]  # the scale reaches the result


def test_sweep_names_outputs_apart_when_stems_collide(tmp_path, tiny_model):  # noqa: F811
    """img.png and img.jpg: each keeps its own PNGs (the driver's output_stems), and the record
    says which."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(data / "img.png")
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(data / "img.jpg")
    c = config("measurement", "denoise", tiny_model, data)
    run_sweep(c, tmp_path / "s", "noise_sigma", [0.0, 0.5], progress=False)
    recs = [json.loads(x) for x in (tmp_path / "s" / "results.jsonl").read_text().splitlines()]
    assert sorted({(r["image"], r["output"]) for r in recs}) == [
        ("img.jpg", "img_jpg"),
        ("img.png", "img_png"),
    ]
    black = jdata.load_image(tmp_path / "s" / "images" / "img_png_0.png")
    white = jdata.load_image(tmp_path / "s" / "images" / "img_jpg_0.png")
    assert black.max() == -1.0 and white.min() == 1.0  # not one file written twice
