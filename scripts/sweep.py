"""Sweep one traced hyperparameter: every value over every image in ONE compiled call.

    python -m scripts.sweep --config=configs/dps.py:box --sweep=scale:0.1,0.3,1,3 --workdir=OUT
    python -m scripts.sweep --config=configs/score_ald.py:box --sweep=weight:0.3,1,3 ...
    python -m scripts.sweep --config=configs/sdedit.py:gaussian_blur --sweep=t0:0.2,0.4,0.6 ...
    python -m scripts.sweep --config=configs/dps.py:sr4 --sweep=noise_sigma:0.01,0.05,0.1 ...

The samplers take their hyperparameters as traced arguments, so the values are one more vmap
axis of the same program (images sharded over the devices as in the driver). `noise_sigma` is the
measurement noise of the task (samplers that assume a sigma follow it). Every image keeps its key
across values, so the values see the same measurements and the same sampler noise.

Writes into --workdir: sweep.md / sweep.csv / sweep.json (mean and std of each metric per value,
the best value by --metric), sweep.png (metric vs value, best marked), sweep_grid.png (the
reconstructions side by side), results.jsonl (one line per value and image) and
images/NAME_VALUE.png.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import pathlib
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxdiff import data as jdata
from jaxdiff.experiment import build
from jaxdiff.images import load_images
from jaxdiff.metrics.per_image import LOWER_IS_BETTER, METRICS, compute_metrics
from jaxdiff.runner import BatchRunner, image_keys, round_batch
from jaxdiff.runs import config_dict


def define_flags() -> None:
    """Defined only when run as a script, so that importing this module (the demo, the
    tests) never collides with another script's flags."""
    global _CONFIG, _SWEEP, _WORKDIR, _METRIC, _PROGRESS
    _CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/dps.py:box")
    _SWEEP = flags.DEFINE_string("sweep", None, "NAME:V1,V2,... e.g. scale:0.1,0.3,1,3")
    _WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
    _METRIC = flags.DEFINE_enum("metric", "lpips", list(METRICS), "the metric that picks the best")
    _PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """ "scale:0.1,0.3,1" -> ("scale", [0.1, 0.3, 1.0]); errors name the bad part."""
    if not spec or ":" not in spec:
        raise ValueError(f"--sweep must be NAME:V1,V2,..., got {spec!r}")
    name, vals = spec.split(":", 1)
    name = name.strip()
    try:
        values = [float(v) for v in vals.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {spec!r}: values must be numbers") from None
    if not name or not values:
        raise ValueError(f"--sweep {spec!r}: need a name and at least one value")
    return name, values


def value_label(v: float) -> str:
    return f"{v:g}"


def prepare_config(config, name: str, values):
    """A copy of `config` able to run every value: a static bound the sampler declares for the
    swept hparam (SDEdit's max_t0 for t0) covers max(values)."""
    from jaxdiff.samplers import SAMPLERS

    config = copy.deepcopy(config)
    with config.unlocked():
        bounds = SAMPLERS.get(config.method).bounds if config.method in SAMPLERS else {}
        if name in bounds:
            config.sampler.options[bounds[name]] = float(max(values))
        if name in config.sampler.hparams:
            config.sampler.hparams[name] = float(values[0])  # unused: the sweep overrides it
    return config


def run_sweep(config, workdir, name, values, *, metric="lpips", progress=True, exp=None):
    """Run the sweep and write its files; returns the table as a dict."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    values = [float(v) for v in values]
    config = prepare_config(config, name, values)
    exp = exp or build(config)
    images = load_images(config.data, exp.image_size, config.num_images, exp.meta)
    n = len(images.names)
    batch = round_batch(config.batch_size, n)
    runner = BatchRunner(exp, batch, sweep=True)
    keys = image_keys(config.seed, images.index)
    per = {v: {m: [] for m in METRICS} for v in values}
    records, seconds = [], 0.0
    from tqdm.auto import tqdm

    bar = tqdm(total=n * len(values), desc=f"sweep {name}", unit="img", disable=not progress)
    for start in range(0, n, batch):
        sel = list(range(start, min(start + batch, n)))
        t0, c0 = time.perf_counter(), runner.compile_seconds
        out = runner(keys[sel], images.arrays[sel], {name: np.asarray(values, np.float32)})
        seconds += time.perf_counter() - t0 - (runner.compile_seconds - c0)
        x_hat = out["x_hat"]  # (V, n, S, S, 3)
        truth = np.broadcast_to(images.arrays[sel], x_hat.shape)
        flat = compute_metrics(
            x_hat.reshape(-1, *x_hat.shape[2:]),
            truth.reshape(-1, *x_hat.shape[2:]),
            net=config.metrics.lpips_net,
            mode=config.metrics.range,
        )
        for a, v in enumerate(values):
            for j, i in enumerate(sel):
                m = {k: float(flat[k][a * len(sel) + j]) for k in METRICS}
                for k in METRICS:
                    per[v][k].append(m[k])
                nm = pathlib.Path(images.names[i]).stem
                jdata.save_png(workdir / "images" / f"{nm}_{value_label(v)}.png", x_hat[a, j])
                records.append(
                    {
                        "value": v,
                        "image": images.names[i],
                        "index": int(images.index[i]),
                        "seed": int(config.seed),
                        "metrics": m,
                        "diverged_at": int(out["diverged"][a, j]),
                    }
                )
            if a == 0:
                for j, i in enumerate(sel):
                    nm = pathlib.Path(images.names[i]).stem
                    jdata.save_png(workdir / "images" / f"{nm}_truth.png", images.arrays[i])
                    jdata.save_png(workdir / "images" / f"{nm}_measurement.png", out["y"][a, j])
        bar.update(len(sel) * len(values))
    bar.close()
    rows = []
    for v in values:
        row = {"value": v}
        for k in METRICS:
            arr = np.asarray([x for x in per[v][k] if math.isfinite(x)])
            row[k] = {
                "mean": float(arr.mean()) if arr.size else None,
                "std": float(arr.std()) if arr.size else None,
            }
        rows.append(row)
    best = _best(rows, metric)
    result = {
        "name": name,
        "values": values,
        "metric": metric,
        "best": best,
        "rows": rows,
        "method": exp.method.name,
        "task": exp.task["name"],
        "effective_task": exp.task,
        "num_images": n,
        "skipped": images.skipped,
        "compile_seconds": runner.compile_seconds,
        "seconds_per_image_per_value": seconds / max(n * len(values), 1),
        "config": config_dict(config),
    }
    lines = [json.dumps(r, sort_keys=True) for r in records]
    jdata.atomic_write_text(workdir / "results.jsonl", "\n".join(lines) + "\n")
    jdata.atomic_write_json(workdir / "sweep.json", result)
    jdata.atomic_write_text(workdir / "sweep.md", markdown(result))
    jdata.atomic_write_text(workdir / "sweep.csv", to_csv(result))
    plot(result, workdir / "sweep.png")
    plot_recons(workdir, images.names[:4], values, workdir / "sweep_grid.png")
    return result


def _best(rows, metric):
    ok = [r for r in rows if r[metric]["mean"] is not None]
    if not ok:
        return None
    pick = min if LOWER_IS_BETTER[metric] else max
    return pick(ok, key=lambda r: r[metric]["mean"])["value"]


def markdown(r: dict) -> str:
    best = "no finite results"
    if r["best"] is not None:
        best = f"Best by {r['metric']}: **{r['name']} = {value_label(r['best'])}**"
    head = f"# {r['method']} on {r['task']}: sweep of `{r['name']}` ({r['num_images']} images)"
    head += "\n\n" + best
    lines = [head, "", "| value | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ |", "|---|---|---|---|"]
    for row in r["rows"]:
        cells = []
        for k, d in zip(METRICS, (2, 3, 3)):
            s = row[k]
            cells.append("n/a" if s["mean"] is None else f"{s['mean']:.{d}f} ± {s['std']:.{d}f}")
        mark = " ★" if row["value"] == r["best"] else ""
        lines.append(f"| {value_label(row['value'])}{mark} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"One compiled call for all {len(r['values'])} values "
        f"(compile {r['compile_seconds']:.1f} s, "
        f"{r['seconds_per_image_per_value']:.2f} s per image and value).",
    ]
    return "\n".join(lines) + "\n"


def to_csv(r: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([r["name"]] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")])
    for row in r["rows"]:
        w.writerow([row["value"]] + [row[k][s] for k in METRICS for s in ("mean", "std")])
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    jdata.atomic_write_bytes(path, buf.getvalue())


def plot(r: dict, path) -> None:
    plt = _plt()
    xs = np.asarray(r["values"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3))
    log_x = bool(np.all(xs > 0) and xs.max() / xs.min() >= 10)
    for ax, k in zip(axes, METRICS):
        mean = np.asarray([np.nan if q[k]["mean"] is None else q[k]["mean"] for q in r["rows"]])
        std = np.asarray([np.nan if q[k]["std"] is None else q[k]["std"] for q in r["rows"]])
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3)
        best = _best(r["rows"], k)
        if best is not None:
            i = r["values"].index(best)
            ax.plot([best], [mean[i]], "r*", markersize=14, label=f"best {value_label(best)}")
            ax.legend(fontsize=8)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(r["name"])
        ax.set_title(f"{k} ({'lower' if LOWER_IS_BETTER[k] else 'higher'} is better)")
    fig.suptitle(f"{r['method']} on {r['task']}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_recons(workdir, names, values, path) -> None:
    plt = _plt()
    cols = ["truth", "measurement"] + [value_label(v) for v in values]
    fig, axes = plt.subplots(
        len(names), len(cols), figsize=(1.4 * len(cols), 1.5 * len(names)), squeeze=False
    )
    for i, name in enumerate(names):
        nm = pathlib.Path(name).stem
        for j, c in enumerate(cols):
            img = jdata.load_image(workdir / "images" / f"{nm}_{c}.png")
            axes[i, j].imshow((img + 1) / 2, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(c, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    name, values = parse_sweep(_SWEEP.value)
    r = run_sweep(
        _CONFIG.value, _WORKDIR.value, name, values, metric=_METRIC.value, progress=_PROGRESS.value
    )
    print(markdown(r))
    print(f"wrote {_WORKDIR.value}/sweep.md, sweep.csv, sweep.json, sweep.png, sweep_grid.png")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["config", "sweep", "workdir"])
    app.run(main)
