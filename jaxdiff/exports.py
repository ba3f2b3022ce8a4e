"""A finished run's results for other tools: results.csv (one row per image, beside
results.jsonl) and TensorBoard event files through a `clu.metric_writers.MetricWriter`.

TensorBoard is optional (`pip install jaxdiff[tensorboard]`): clu's own writer where TensorFlow
is installed, else the same MetricWriter interface over tensorboardX, which writes event files
without TensorFlow. Any object with that interface (write_scalars, write_images, write_texts,
write_hparams, flush) can be passed instead.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib

import numpy as np

from jaxdiff import data as jdata
from jaxdiff.metrics.per_image import METRICS
from jaxdiff.workdir import RESULTS, SUMMARY_JSON

RESULTS_CSV = "results.csv"
MISSING_TENSORBOARD = (
    "TensorBoard logging needs tensorboardX (or clu with TensorFlow): "
    "pip install 'jaxdiff[tensorboard]'"
)


def read_records(run) -> list[dict]:
    """The records of `run/results.jsonl` in run order ([] when there are none yet)."""
    path = pathlib.Path(run) / RESULTS
    if not path.is_file():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(recs, key=lambda r: (r.get("index", 0), r["image"]))


def results_csv(records) -> str:
    """Per-image rows: image, index, seed, each metric (full precision), seconds, diverged_at,
    output stem, image SHA-256."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["image", "index", "seed", *METRICS, "seconds", "diverged_at", "output", "image_sha256"]
    )
    for r in records:
        m = r.get("metrics") or {}
        w.writerow(
            [r["image"], r.get("index", ""), r.get("seed", ""), *(m.get(k, "") for k in METRICS),
             r.get("seconds", ""), r.get("diverged_at", ""), r.get("output", ""),
             r.get("image_sha256", "")]
        )  # fmt: skip
    return buf.getvalue()


def write_results_csv(run) -> pathlib.Path | None:
    """`run/results.csv` from `run/results.jsonl` (None when the run has no results yet)."""
    records = read_records(run)
    if not records:
        return None
    out = pathlib.Path(run) / RESULTS_CSV
    jdata.atomic_write_text(out, results_csv(records))
    return out


class _TensorboardXWriter:
    """clu's MetricWriter interface over tensorboardX (no TensorFlow)."""

    def __init__(self, logdir):
        from tensorboardX import SummaryWriter

        self._w = SummaryWriter(str(logdir))

    def write_scalars(self, step, scalars):
        for k, v in scalars.items():
            self._w.add_scalar(k, float(v), int(step))

    def write_images(self, step, images):
        for k, v in images.items():
            self._w.add_images(k, np.asarray(v), int(step), dataformats="NHWC")

    def write_texts(self, step, texts):
        for k, v in texts.items():
            self._w.add_text(k, str(v), int(step))

    def write_hparams(self, hparams):
        self._w.add_text("hparams", json.dumps(hparams, sort_keys=True, default=str), 0)

    def flush(self):
        self._w.flush()

    def close(self):
        self._w.close()


def tensorboard_writer(logdir):
    """A MetricWriter writing TensorBoard event files into `logdir`, or ImportError with one
    line saying what to install."""
    try:
        import tensorflow  # noqa: F401  (clu's summary writer is TensorFlow's)
        from clu import metric_writers

        return metric_writers.create_default_writer(str(logdir), asynchronous=False)
    except ImportError:
        pass
    try:
        return _TensorboardXWriter(logdir)
    except ImportError:
        raise ImportError(MISSING_TENSORBOARD) from None


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def log_run(run, writer, max_images: int = 8) -> int:
    """Write a run's metrics and images to `writer` (a clu MetricWriter): per image (step = its
    position in the run) its metrics under `image/NAME` and its truth | measurement |
    reconstruction strip for the first `max_images`; the run's means and set metrics under
    `mean/NAME` at step 0; the config as hparams and the summary as text. Returns the number of
    images logged."""
    run = pathlib.Path(run)
    summary = json.loads((run / SUMMARY_JSON).read_text())
    records = read_records(run)
    writer.write_hparams(_flat(summary.get("config")))
    writer.write_texts(0, {"run": f"{summary['method']} on {summary['task']} ({run.name})"})
    means = {f"mean/{k}": v["mean"] for k, v in summary["metrics"].items() if v["mean"] is not None}
    sm = summary.get("set_metrics") or {}
    means.update({f"mean/{k}": sm[k] for k in ("fid", "kid") if sm.get(k) is not None})
    writer.write_scalars(0, means)
    for step, r in enumerate(records):
        m = {f"image/{k}": v for k, v in (r.get("metrics") or {}).items() if v is not None}
        writer.write_scalars(step, m)
        if step < max_images:
            stem = r.get("output") or pathlib.Path(r["image"]).stem
            paths = [run / "images" / f"{stem}_{k}.png" for k in ("truth", "measurement", "recon")]
            if all(p.is_file() for p in paths):
                row = jdata.make_grid([[jdata.load_image(p) for p in paths]])
                writer.write_images(step, {"truth_measurement_recon": ((row + 1) / 2)[None]})
    writer.flush()
    return len(records)
