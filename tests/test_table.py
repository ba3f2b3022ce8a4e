"""jaxdiff.report: run folders -> one methods x tasks table (MD, CSV, PNG) and per-task grids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff import report
from jaxdiff.workdir import SUMMARY_JSON, image_path


def _fake_run(
    root, method, task, psnr, ssim, lpips, images=("a.png", "b.png"), folder=None, sigma=0.05
):
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
        "effective_task": {"name": task, "doc": task, "operator": task, "sigma": sigma},
        "data": "demo",
        "config": {"seed": 0, "sampler": {"hparams": {"scale": 1.0}}},
    }
    jdata.atomic_write_json(run / SUMMARY_JSON, summary)
    rng = np.random.default_rng(len(method) + len(task))
    truth = np.random.default_rng(0)  # the same ground truth in every run
    records = []
    for i, name in enumerate(images):
        jdata.save_png(image_path(run, name, "truth"), truth.uniform(-1, 1, (8, 8, 3)))
        for kind in ("measurement", "recon"):
            jdata.save_png(image_path(run, name, kind), rng.uniform(-1, 1, (8, 8, 3)))
        m = {"psnr": psnr + i / 3, "ssim": ssim, "lpips": lpips}
        records.append({"image": name, "index": i, "seed": 0, "metrics": m, "seconds": 1.5})
    lines = [json.dumps(r) for r in records]
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
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


def test_grid_shows_each_panel_filling_its_cell(tmp_path):
    run = _fake_run(tmp_path, "dps", "sr4", 20.0, 0.7, 0.2, images=("a.png",))
    colours = {"truth": (-1, 1, -1), "measurement": (-1, -1, 1), "recon": (1, -1, -1)}
    for kind, rgb in colours.items():
        size = 4 if kind == "measurement" else 8  # an SR measurement: smaller than its image
        jdata.save_png(image_path(run, "a.png", kind), np.ones((size, size, 3)) * np.array(rgb))
    t = report.collect(report.find_runs([tmp_path]))
    assert report.plot_grid(t, "sr4", tmp_path / "g.png")
    g = (jdata.load_image(tmp_path / "g.png") + 1) / 2
    area = {
        k: np.sum(np.all(np.abs(g - (np.array(c) + 1) / 2) < 0.05, -1)) for k, c in colours.items()
    }
    assert min(area.values()) > 0.03 * g.shape[0] * g.shape[1]  # each panel is drawn
    assert max(area.values()) < 1.1 * min(area.values())  # the 4x4 measurement fills its cell


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


def test_runs_of_one_task_with_different_settings_get_their_own_columns(tmp_path):
    _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2, folder="dps_a", sigma=0.05)
    _fake_run(tmp_path, "telea", "box", 18.0, 0.6, 0.3, folder="telea_a", sigma=0.05)
    _fake_run(tmp_path, "dps", "box", 15.0, 0.5, 0.4, folder="dps_b", sigma=0.5)
    written = report.make_table([tmp_path], out=tmp_path / "t")
    md = written["md"].read_text()
    assert "| method | box [sigma=0.05] | box [sigma=0.5] |" in md
    assert "| dps | 20.00 / 0.700 / 0.200 | 15.00 / 0.500 / 0.400 |" in md
    assert "| telea | 18.00 / 0.600 / 0.300 | – |" in md
    assert "grid_box_1" in written and "grid_box_2" in written
    # one setting: the column is just the task's name
    one = report.collect(report.find_runs([tmp_path / "dps_a", tmp_path / "telea_a"]))
    assert one["tasks"] == ["box"]


def test_a_grid_pairs_each_measurement_with_its_own_runs_reconstruction(tmp_path):
    _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2)
    _fake_run(tmp_path, "telea", "box", 18.0, 0.6, 0.3)
    t = report.collect(report.find_runs([tmp_path]))
    stems, columns = report.grid_layout(t, "box")
    assert stems == ["a", "b"]
    kinds = [c["kind"] for c in columns]
    assert kinds == ["truth", "measurement", "recon", "measurement", "recon"]
    for meas, recon in zip(columns[1::2], columns[2::2]):
        assert meas["run"] == recon["run"]  # never one run's measurement beside another's output
    assert {c["run"] for c in columns[1:]} == {
        str(tmp_path / "dps_box"),
        str(tmp_path / "telea_box"),
    }
    assert (
        columns[2]["title"] == "dps reconstruction\n20.00 / 0.700 / 0.200"
    )  # method and its means
    # a run whose ground truth differs shows its own
    jdata.save_png(image_path(tmp_path / "telea_box", "a.png", "truth"), np.zeros((8, 8, 3)))
    _, columns = report.grid_layout(report.collect(report.find_runs([tmp_path])), "box")
    assert [c["title"] for c in columns].count("telea\nground truth") == 1
    assert report.plot_grid(t, "box", tmp_path / "g.png")


def test_per_image_csv_beside_results_jsonl(tmp_path):
    run = _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2)
    report.make_table([run], out=tmp_path / "t")
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["a.png", "b.png"]
    assert float(rows[1]["psnr"]) == 20.0 + 1 / 3  # full precision
    assert rows[0]["ssim"] == "0.7" and rows[0]["seed"] == "0"


class FakeWriter:
    """clu.metric_writers.MetricWriter's interface, recording the calls."""

    def __init__(self):
        self.scalars, self.images, self.texts, self.hparams = [], [], [], None

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def write_images(self, step, images):
        self.images.append((step, {k: np.asarray(v) for k, v in images.items()}))

    def write_texts(self, step, texts):
        self.texts.append((step, dict(texts)))

    def write_hparams(self, hparams):
        self.hparams = dict(hparams)

    def flush(self):
        pass


def test_tensorboard_logging_of_a_run(tmp_path, monkeypatch):
    from jaxdiff import exports

    run = _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2)
    w = FakeWriter()
    assert exports.log_run(run, w) == 2
    assert w.hparams["sampler.hparams.scale"] == 1.0 and w.hparams["seed"] == 0
    assert (0, {"mean/psnr": 20.0, "mean/ssim": 0.7, "mean/lpips": 0.2}) in w.scalars
    assert (1, {"image/psnr": 20.0 + 1 / 3, "image/ssim": 0.7, "image/lpips": 0.2}) in w.scalars
    step, imgs = w.images[1]
    strip = imgs["truth_measurement_recon"]
    assert step == 1 and strip.shape[0] == 1 and strip.shape[-1] == 3
    assert 0 <= strip.min() and strip.max() <= 1
    np.testing.assert_allclose(  # the first panel is that image's ground truth
        strip[0, 2:10, 2:10], (jdata.load_image(image_path(run, "b.png", "truth")) + 1) / 2
    )
    # without tensorboardX (and clu + TensorFlow): one line saying what to install
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxdiff\[tensorboard\]'"):
        exports.tensorboard_writer(tmp_path / "tb")


def test_the_headline_prints_the_digits_of_the_table(tmp_path):
    from jaxdiff.summary import headline

    run = _fake_run(tmp_path, "dps", "box", 20.123456789, 0.71234567, 0.21234567)
    s = json.loads((run / SUMMARY_JSON).read_text())
    s["set_metrics"] = {"fid": 65.9712345, "kid": 0.0123456789}
    assert headline(s) == (
        "dps/box: 2 images, PSNR 20.12 dB, SSIM 0.712, LPIPS 0.212; FID 65.97, KID 0.01235"
    )
    s["set_metrics"] = {"fid": None, "kid": None, "note": "not computable: 1 image"}
    assert headline(s).endswith("LPIPS 0.212; FID/KID not computable: 1 image")


def test_an_unfinished_run_is_named_not_silently_left_out(tmp_path):
    """A run folder killed before its summary (config.json, results.jsonl, no summary.json)
    is not in the table, and table.md says so; a finished folder of another command is not
    named."""
    _fake_run(tmp_path, "dps", "box", 20.0, 0.7, 0.2)
    killed = tmp_path / "telea_box"
    killed.mkdir()
    jdata.atomic_write_json(killed / "config.json", {"command": "reproduce", "config": {}})
    (killed / "results.jsonl").write_text("")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    jdata.atomic_write_json(sweep / "config.json", {"command": "sweep", "config": {}})
    assert report.unfinished_runs([tmp_path]) == [killed]
    md = report.make_table([tmp_path], out=tmp_path / "t")["md"].read_text()
    assert "telea" not in md.split("Not in this table")[0]
    assert f"unfinished (no summary.json; rerun the same command to\nfinish): {killed}." in md
    assert "sweep" not in md
