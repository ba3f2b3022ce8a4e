"""jaxdiff.sweep: every value in one compiled call; per-value results equal separate runs."""

# ruff: noqa: F811 (the fixtures imported from test_reproduce are arguments here)
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.runner import FUN_NAME
from jaxdiff.runs import run
from jaxdiff.sweep import (
    markdown,
    parse_sweep,
    parse_sweeps,
    point_label,
    run_sweep,
    summarize,
    value_label,
)
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


@pytest.mark.slow
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
    assert len(swept) == 3  # one line per image, every value's metrics in it
    assert all([p["hparams"]["weight"] for p in rec["points"]] == values for rec in swept)
    for v in (4.0,):  # a separate run at one of the values
        cv = config("score_ald", "gaussian_blur", tiny_model, image_dir, respacing="4")
        cv.sampler.hparams.weight = v
        run(cv, tmp_path / f"run{v}", progress=False)
        single = records(tmp_path / f"run{v}")
        for rec in swept:
            want = single[rec["image"]]["metrics"]
            got = rec["points"][values.index(v)]["metrics"]
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-5)
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


def test_malformed_sweeps_are_one_clear_line():
    with pytest.raises(
        ValueError,
        match=r"one hyperparameter per --sweep \('eta_b:0.5'.*"
        r"--sweep=eta:\.\.\. --sweep=eta_b:",
    ):
        parse_sweep("eta:0.5,1,eta_b:0.5")
    with pytest.raises(ValueError, match="'eta' given twice"):
        parse_sweeps(["eta:0.5", "eta:1"])
    assert parse_sweeps(["eta:0.5,1", "eta_b:0.5"]) == {"eta": [0.5, 1.0], "eta_b": [0.5]}
    for bad, why in (
        ("eta:0.5,nan", "nan is not a finite number"),
        ("eta:inf", "inf is not a finite number"),
        ("eta:0.5,1,0.5", "0.5 given twice"),
        ("eta:0.5,0.50000001", "0.50000001 and 0.5 are one float32 value"),
    ):
        with pytest.raises(ValueError, match=f"--sweep eta: {why}"):
            parse_sweep(bad)
        assert "\n" not in str(ValueError(why))


def test_labels_tell_distinct_values_apart():
    """0.5 and 0.5000001 once shared one PNG (`%g`); labels stay short where `%g` suffices."""
    assert value_label(0.5) == "0.5" and value_label(4.0) == "4" and value_label(0.25) == "0.25"
    assert value_label(0.5000001) != value_label(0.5)
    assert np.float32(float(value_label(0.5000001))) == np.float32(0.5000001)
    assert point_label({"eta": 0.5, "eta_b": 1.0}) == "eta=0.5,eta_b=1"
    assert point_label({"eta": 0.5}) == "0.5"


@pytest.mark.parametrize(
    "method, task, name, values, over, why",
    [
        (
            "measurement",
            "denoise",
            "noise_sigma",
            [-0.05, 0.1],
            {},
            r"noise_sigma=-0.05 .*\[0, 2\]",
        ),
        ("measurement", "denoise", "noise_sigma", [0.1], {"seed": -1}, r"seed=-1 must be"),
        ("score_ald", "denoise", "weigth", [1.0], {}, r"unknown hyperparameter.*'weigth'.*weight"),
        ("score_ald", "denoise", "weight", [-1.0, 1.0], {}, r"weight=-1 is outside .*\[0, 100\]"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_compiles_or_is_written(
    tmp_path,
    tiny_model,
    image_dir,
    method,
    task,
    name,
    values,
    over,
    why,  # noqa: F811
):
    """As the driver validates a config (the sweep once skipped it: seed -1 and a negative
    noise sigma ran), and a typo'd name no longer fails deep inside a JAX trace."""
    c = config(method, task, tiny_model, image_dir, **over)
    with CompileCounter() as counter, pytest.raises(ValueError, match=why):
        run_sweep(c, tmp_path / "w", name, values, progress=False)
    assert counter.count == 0 and not (tmp_path / "w").exists()


def test_clean_noise_sweep_of_noise_sigma_is_refused(tmp_path, tiny_model, image_dir):  # noqa: F811
    c = config("measurement", "denoise", tiny_model, image_dir)
    c.task.noise = "clean"
    with pytest.raises(ValueError, match="noise_sigma sets the std of Gaussian .* 'clean'"):
        run_sweep(c, tmp_path / "w", "noise_sigma", [0.1], progress=False)


def _store(recs):
    class Store:
        def ordered(self):
            return recs

    return Store()


class _Exp:
    method = type("M", (), {"name": "ddrm"})()
    task = {"name": "box"}


def _rec(name, points):
    return {
        "image": name,
        "seconds_per_point": 0.1,
        "points": [
            {"hparams": h, "metrics": {"psnr": p, "ssim": 0.5, "lpips": lp}, "diverged_at": d}
            for h, p, lp, d in points
        ],
    }


def test_diverged_images_are_marked_never_averaged_never_best():
    """The -1 row of DDRM's eta sweep once showed 7.65 dB from two images that diverged at
    step 1, as an ordinary row that could be picked."""
    axes = {"eta": [0.2, 0.5, 0.85]}
    points = [{"eta": v} for v in axes["eta"]]
    recs = [
        _rec(
            "a",
            [(points[0], 30.0, 0.01, 0), (points[1], 20.0, 0.3, -1), (points[2], 21.0, 0.2, -1)],
        ),
        _rec(
            "b",
            [(points[0], 10.0, 0.02, -1), (points[1], 22.0, 0.3, -1), (points[2], 23.0, 0.2, -1)],
        ),
    ]
    r = summarize(_Exp, axes, points, ["a", "b"], {}, _store(recs), "lpips", {})
    r["compile_seconds"] = 0.0
    first = r["rows"][0]
    assert first["diverged"] == ["a"] and first["psnr"]["mean"] == 10.0  # only b's
    assert r["best"] == 0.85 and r["best_hparams"] == {"eta": 0.85}  # not 0.2 (lpips 0.01)
    assert r["best_at_edge"] == ["eta"]
    md = markdown(r)
    assert "| 0.2 | " in md and "| 1 of 2 |" in md
    assert "eta = 0.85 is at the edge of the swept range [0.2, 0.85]" in md
    r2 = summarize(
        _Exp,
        {"eta": [0.5, 0.85]},
        points[1:],
        ["a", "b"],
        {},
        _store([_rec(n, [(points[1], 20.0, 0.1, -1), (points[2], 20.0, 0.3, -1)]) for n in "ab"]),
        "lpips",
        {},
    )
    assert r2["best"] == 0.5 and r2["best_at_edge"] == ["eta"]
    mid = {"eta": [0.2, 0.5, 0.85]}
    r3 = summarize(
        _Exp,
        mid,
        points,
        ["a"],
        {},
        _store(
            [
                _rec(
                    "a",
                    [
                        (points[0], 20.0, 0.3, -1),
                        (points[1], 20.0, 0.1, -1),
                        (points[2], 20.0, 0.3, -1),
                    ],
                )
            ]
        ),
        "lpips",
        {},
    )
    assert r3["best"] == 0.5 and r3["best_at_edge"] == []
    everything_diverged = summarize(
        _Exp,
        axes,
        points,
        ["a"],
        {},
        _store([_rec("a", [(p, 20.0, 0.1, 3) for p in points])]),
        "lpips",
        {},
    )
    assert everything_diverged["best"] is None


@pytest.mark.slow  # two sweep compiles of the UNet (~40 s on 2 cores)
def test_grid_sweep_is_one_compile_over_the_product(tmp_path, tiny_model, image_dir):  # noqa: F811
    """--sweep=weight:... --sweep=noise_sigma:...: every pair in one program (a second --sweep
    once silently replaced the first); each point equals the one-hyperparameter sweep's."""
    c = config("score_ald", "denoise", tiny_model, image_dir, num_images=2)
    axes = {"weight": [0.5, 2.0], "noise_sigma": [0.05, 0.2]}
    with CompileCounter() as counter:
        r = run_sweep(c, tmp_path / "grid", axes, progress=False)
    assert counter.count == 1
    assert [row["hparams"] for row in r["rows"]] == [
        {"weight": w, "noise_sigma": s} for w in (0.5, 2.0) for s in (0.05, 0.2)
    ]
    one = run_sweep(c, tmp_path / "one", "weight", [0.5, 2.0], progress=False)
    for row in one["rows"]:
        g = next(
            q for q in r["rows"] if q["hparams"] == {"weight": row["value"], "noise_sigma": 0.05}
        )
        assert g["psnr"]["mean"] == pytest.approx(row["psnr"]["mean"], rel=1e-5)
    psnr = {tuple(q["hparams"].values()): q["psnr"]["mean"] for q in r["rows"]}
    assert psnr[(0.5, 0.05)] != psnr[(0.5, 0.2)]  # the second axis reaches the result
    names = sorted(p.name for p in (tmp_path / "grid" / "images").iterdir())
    assert sum("weight=2,noise_sigma=0.2" in n for n in names) == 2
    assert "| weight | noise_sigma |" in (tmp_path / "grid" / "sweep.md").read_text()
    assert jdata.load_image(tmp_path / "grid" / "sweep.png").ndim == 3


@pytest.mark.slow  # 10-50 s: kept out of the default run's 10 minutes
def test_interrupted_sweep_keeps_finished_batches_and_resumes(
    tmp_path,
    tiny_model,
    image_dir,
    monkeypatch,  # noqa: F811
):
    """Ctrl-C after the first batch: its images are in results.jsonl; the rerun computes only
    the rest and ends with the uninterrupted sweep's numbers. Another sweep's values refuse."""
    import shutil

    from jaxdiff import runner as runner_mod

    data = tmp_path / "data"  # nine images: a batch of 8 (the device count), then one
    data.mkdir()
    photos = sorted(p for p in image_dir.iterdir() if "corrupt" not in p.name)
    for i in range(9):
        shutil.copy(photos[i % 3], data / f"{i}_{photos[i % 3].name}")
    c = config("measurement", "denoise", tiny_model, data)
    values = [0.05, 0.2]
    full = run_sweep(c, tmp_path / "full", "noise_sigma", values, progress=False)
    calls = []
    real = runner_mod.BatchRunner.__call__

    def interrupted(self, keys, x, hparams=None):
        calls.append(len(keys))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, keys, x, hparams)

    monkeypatch.setattr(runner_mod.BatchRunner, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(c, tmp_path / "w", "noise_sigma", values, progress=False)
    lines = (tmp_path / "w" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8  # the finished batch is kept
    first = json.loads(lines[0])
    counted = []
    monkeypatch.setattr(
        runner_mod.BatchRunner,
        "__call__",
        lambda self, keys, x, hparams=None: counted.append(1) or real(self, keys, x, hparams),
    )
    resumed = run_sweep(c, tmp_path / "w", "noise_sigma", values, progress=False)
    assert len(counted) == 1  # only the image left
    recs = [json.loads(x) for x in (tmp_path / "w" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 9 and first in recs  # the first batch's records untouched
    for a, b in zip(resumed["rows"], full["rows"], strict=True):
        assert a["psnr"]["mean"] == pytest.approx(b["psnr"]["mean"], rel=1e-6)
    with pytest.raises(ValueError, match="different config.*sweep"):
        run_sweep(c, tmp_path / "w", "noise_sigma", [0.05, 0.3], progress=False)


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
