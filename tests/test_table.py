"""jaxdiff.report: run folders -> one methods x tasks table (MD, CSV, PNG) and per-task grids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff import report
from jaxdiff.workdir import SUMMARY_JSON, image_path


def _fake_run(root, method, task, psnr, ssim, lpips, images=("a.png", "b.png"), folder=None):
    """A run folder as jaxdiff.runs writes it (the summary fields the table reads + PNGs)."""
    run = root / (folder or f"{method}_{task}")
    run.mkdir(parents=True)
    stat = lambda v: {"mean": v, "std": 0.1, "n": len(images)}  # noqa: E731
    summary = {
        "method": method,
        "task": task,
        "num_images": len(images),
        "image_size": 8,
        "metrics": {"psnr": stat(psnr), "ssim": stat(ssim), "lpips": stat(lpips)},
        "seconds_per_image": stat(1.5),
    }
    jdata.atomic_write_json(run / SUMMARY_JSON, summary)
    rng = np.random.default_rng(len(method) + len(task))
    for name in images:
        for kind in ("truth", "measurement", "recon"):
            jdata.save_png(image_path(run, name, kind), rng.uniform(-1, 1, (8, 8, 3)))
    return run


def test_table_layout_values_and_files(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root, "measurement", "box", 15.0, 0.5, 0.4)
    _fake_run(root, "telea", "box", 18.0, 0.6, 0.3)
    _fake_run(root, "dps", "box", 22.471, 0.8733, 0.168)
    _fake_run(root, "dps", "sr4", 25.67, 0.852, 0.214)
    _fake_run(root, "bicubic", "sr4", 24.0, 0.8, 0.3, images=("a.png",))
    written = report.make_table([root])  # a folder of run folders
    assert written["md"] == root / "table.md"
    md = written["md"].read_text()
    lines = md.splitlines()
    # the paper's column order (sr4 before box); diffusion methods first, the floor last
    assert "| method | sr4 | box |" in lines
    rows = [line.split(" | ")[0].strip("| ") for line in lines if line.startswith("| ")]
    assert rows[1:6] == ["dps", "bicubic", "telea", "measurement", "task"]
    assert "| dps | 25.67 / 0.852 / 0.214 | 22.47 / 0.873 / 0.168 |" in lines
    assert "| telea | – | 18.00 / 0.600 / 0.300 |" in lines  # not run on sr4
    with open(written["csv"]) as f:
        recs = list(csv.DictReader(f))
    assert len(recs) == 5 * 3
    r = next(r for r in recs if (r["method"], r["task"], r["metric"]) == ("dps", "sr4", "lpips"))
    assert float(r["mean"]) == 0.214 and float(r["seconds_per_image"]) == 1.5
    for key in ("png", "grid_box", "grid_sr4"):
        assert jdata.load_image(written[key]).shape[-1] == 3
    # a rerun gives the same table.md byte for byte (no timings or paths in it)
    assert report.make_table([root])["md"].read_text() == md


def test_explicit_run_folders_out_and_duplicates(tmp_path):
    a = _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2, folder="dps_scale05")
    b = _fake_run(tmp_path, "dps", "box", 21.0, 0.75, 0.19, folder="dps_scale1")
    written = report.make_table([a, b], out=tmp_path / "t")
    md = written["md"].read_text()
    assert "| dps (dps_scale05) | 20.00 / 0.700 / 0.200 |" in md
    assert "| dps (dps_scale1) | 21.00 / 0.750 / 0.190 |" in md


def test_grid_uses_images_common_to_all_runs(tmp_path):
    _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2, images=("a.png", "b.png", "c.png"))
    _fake_run(tmp_path, "telea", "box", 18.0, 0.6, 0.3, images=("b.png", "c.png"))
    t = report.collect(report.find_runs([tmp_path]))
    assert report.plot_grid(t, "box", tmp_path / "g.png", max_images=4)
    one_row = jdata.load_image(tmp_path / "g.png")
    assert report.plot_grid(t, "box", tmp_path / "g1.png", max_images=1)
    assert jdata.load_image(tmp_path / "g1.png").shape[0] < one_row.shape[0]


def test_missing_metrics_and_bad_paths(tmp_path):
    run = _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2)
    s = json.loads((run / SUMMARY_JSON).read_text())
    s["metrics"]["lpips"] = {"mean": None, "std": None, "n": 0}  # e.g. images under 32 px
    jdata.atomic_write_json(run / SUMMARY_JSON, s)
    assert "| dps | 20.00 / 0.700 / n/a |" in report.make_table([run])["md"].read_text()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        report.find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run folders"):
        report.find_runs([tmp_path / "empty"])
