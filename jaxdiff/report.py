"""Tables and figures of finished runs: run folders -> one methods x tasks table, the form of
the DPS paper's tables (scripts/table.py), and the sweep's figures (jaxdiff.sweep).

make_table writes into its `out` folder: table.md (cells "PSNR / SSIM / LPIPS", mean over
images), table.csv (one row per method, task and metric: mean, std, n, seconds per image, run
folder), table.png (one heat-map panel per metric) and grid_TASK.png (ground truth | measurement |
every method, the same images side by side).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib

import numpy as np

from jaxdiff import data as jdata
from jaxdiff.metrics.per_image import DIGITS, LABELS, LOWER_IS_BETTER, METRICS
from jaxdiff.workdir import SUMMARY_JSON, image_path, read_png

# The paper's columns, then the others
TASK_ORDER = ("sr4", "box", "random", "gaussian_blur", "motion_blur", "sr2")
METHOD_ORDER = ("dps", "score_ald", "sdedit", "tweedie", "ddpm")  # diffusion first, then the rest


def find_runs(paths) -> list[pathlib.Path]:
    """Run folders (holding summary.json) among `paths` and their direct sub-folders."""
    runs = []
    for p in map(pathlib.Path, paths):
        if (p / SUMMARY_JSON).is_file():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(q for q in p.iterdir() if (q / SUMMARY_JSON).is_file())
        else:
            raise FileNotFoundError(f"{p}: no {SUMMARY_JSON} (not a run folder)")
    if not runs:
        raise FileNotFoundError(f"no run folders (with {SUMMARY_JSON}) in {list(paths)}")
    return runs


def _order(items, preferred):
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(items, key=lambda x: (rank.get(x, len(rank)), x))


def collect(runs) -> dict:
    """{"methods", "tasks", "cells": {(method, task): summary-with-run}}; a repeated
    (method, task) is labelled by its folder name."""
    summaries = []
    for r in runs:
        s = json.loads((pathlib.Path(r) / SUMMARY_JSON).read_text())
        s["run"] = str(r)
        summaries.append(s)
    counts = {}
    for s in summaries:
        counts[(s["method"], s["task"])] = counts.get((s["method"], s["task"]), 0) + 1
    cells = {}
    for s in summaries:
        label = s["method"]
        if counts[(s["method"], s["task"])] > 1:
            label = f"{s['method']} ({pathlib.Path(s['run']).name})"
        cells[(label, s["task"])] = s
    methods = _order({m for m, _ in cells}, METHOD_ORDER)
    methods = [m for m in methods if m != "measurement"] + (
        ["measurement"] if "measurement" in methods else []
    )
    tasks = _order({t for _, t in cells}, TASK_ORDER)
    return {"methods": methods, "tasks": tasks, "cells": cells}


def _mean(s, metric):
    return s["metrics"][metric]["mean"]


def _set_metrics(s) -> dict:
    return s.get("set_metrics") or {}


def has_fid(t: dict) -> bool:
    """Whether any run computed FID/KID (then every cell gets the two columns)."""
    return any(_set_metrics(s).get("fid") is not None for s in t["cells"].values())


def lpips_name(s) -> str:
    """The LPIPS variant a run used (jaxdiff.metrics.lpips names), for the header."""
    from jaxdiff.metrics.lpips import variant_name

    return variant_name(((s.get("config") or {}).get("metrics") or {}).get("lpips_net", "vgg"))


def _cell(s, fid: bool = False, lpips_in_cell: bool = False) -> str:
    if s is None:
        return "–"
    vals = [(_mean(s, m), DIGITS[m]) for m in METRICS]
    out = [("n/a" if v is None else f"{v:.{d}f}") for v, d in vals]
    if lpips_in_cell:
        out[-1] += f" ({lpips_name(s)})"
    if fid:
        sm = _set_metrics(s)
        out.append("missing" if sm.get("fid") is None else f"{sm['fid']:.2f}")
        out.append("missing" if sm.get("kid") is None else f"{sm['kid']:.4f}")
    return " / ".join(out)


def markdown(t: dict) -> str:
    cells = t["cells"]
    head = "| method | " + " | ".join(t["tasks"]) + " |"
    fid = has_fid(t)
    variants = sorted({lpips_name(s) for s in cells.values()})
    lp = f"LPIPS ({variants[0]})" if len(variants) == 1 else "LPIPS (variant in each cell)"
    cols = f"PSNR (dB) ↑ / SSIM ↑ / {lp} ↓" + (" / FID ↓ / KID ↓" if fid else "")
    lines = [
        f"{cols}, mean over images ('–': not run or not applicable).",
        "FID / KID: reconstructions vs ground truth over all images of the run (pytorch-fid "
        "Inception; 'missing': no --config.metrics.inception=DIR, not zero)."
        if fid
        else "FID / KID: missing (runs made without --config.metrics.inception=DIR; not zero).",
        "",
        head,
        "|" + "---|" * (len(t["tasks"]) + 1),
    ]
    for m in t["methods"]:
        row = [_cell(cells.get((m, k)), fid, len(variants) > 1) for k in t["tasks"]]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += ["", "| task | images | image size |", "|---|---|---|"]
    for k in t["tasks"]:
        ss = [cells[(m, k)] for m in t["methods"] if (m, k) in cells]
        n = sorted({s["num_images"] for s in ss})
        size = sorted({s["image_size"] for s in ss})
        lines.append(f"| {k} | {', '.join(map(str, n))} | {', '.join(map(str, size))} |")
    lines += ["", "Seconds per image: table.csv (timings are not part of this file, so a rerun"]
    lines += ["of the same command reproduces it byte for byte)."]
    return "\n".join(lines) + "\n"


def to_csv(t: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "task", "metric", "mean", "std", "n", "seconds_per_image", "run"])
    for m in t["methods"]:
        for k in t["tasks"]:
            s = t["cells"].get((m, k))
            if s is None:
                continue
            for metric in METRICS:
                st = s["metrics"][metric]
                w.writerow(
                    [m, k, metric, st["mean"], st["std"], st["n"],
                     s["seconds_per_image"]["mean"], s["run"]]
                )  # fmt: skip
            if has_fid(t):  # set-level: one value per run ("" = missing), KID's std as std
                sm = _set_metrics(s)
                for metric, std in (("fid", None), ("kid", sm.get("kid_std"))):
                    v = sm.get(metric)
                    w.writerow(
                        [m, k, metric, "" if v is None else v, "" if std is None else std,
                         sm.get("n", ""), s["seconds_per_image"]["mean"], s["run"]]
                    )  # fmt: skip
    return buf.getvalue()


def _plt():
    """pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """The figure as a PNG, written atomically (a killed run leaves no half file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    jdata.atomic_write_bytes(path, buf.getvalue())


def plot_table(t: dict, path) -> None:
    """One heat-map per metric: methods x tasks, each column coloured from worst to best."""
    plt = _plt()
    methods, tasks = t["methods"], t["tasks"]
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(1.3 * len(tasks) * len(METRICS) + 2, 0.45 * len(methods) + 1.5)
    )
    for ax, metric in zip(np.atleast_1d(axes), METRICS):
        vals = np.full((len(methods), len(tasks)), np.nan)
        for i, m in enumerate(methods):
            for j, k in enumerate(tasks):
                s = t["cells"].get((m, k))
                if s is not None and _mean(s, metric) is not None:
                    vals[i, j] = _mean(s, metric)
        score = np.full_like(vals, np.nan)  # 1 = best in its column
        for j in range(len(tasks)):
            col = vals[:, j]
            ok = np.isfinite(col)
            if ok.sum() >= 1:
                lo, hi = np.nanmin(col), np.nanmax(col)
                s = (col - lo) / (hi - lo) if hi > lo else np.ones_like(col)
                score[:, j] = 1 - s if LOWER_IS_BETTER[metric] else s
        ax.imshow(np.ma.masked_invalid(score), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for i in range(len(methods)):
            for j in range(len(tasks)):
                txt = "–" if not np.isfinite(vals[i, j]) else f"{vals[i, j]:.3g}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.set_title(LABELS[metric], fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_grid(t: dict, task: str, path, max_images: int = 4) -> bool:
    """ground truth | measurement | each method, for the images every run of `task` has."""
    ss = [(m, t["cells"][(m, task)]) for m in t["methods"] if (m, task) in t["cells"]]
    # the "measurement" method's image is the measurement column (resized): not shown twice
    shown = [(m, s) for m, s in ss if m != "measurement"] or ss
    names = None
    for _, s in ss:
        have = {
            p.name[: -len("_recon.png")]
            for p in (pathlib.Path(s["run"]) / "images").glob("*_recon.png")
        }
        names = have if names is None else names & have
    names = sorted(names or [])[:max_images]
    if not names:
        return False
    plt = _plt()
    cols = ["ground truth", "measurement"] + [m for m, _ in shown]
    fig, axes = plt.subplots(
        len(names), len(cols), figsize=(1.4 * len(cols), 1.5 * len(names)), squeeze=False
    )
    first = pathlib.Path(ss[0][1]["run"])
    for i, name in enumerate(names):
        imgs = [
            read_png(image_path(first, name, "truth")),
            read_png(image_path(first, name, "measurement")),
        ] + [read_png(image_path(s["run"], name, "recon")) for _, s in shown]
        for j, img in enumerate(imgs):
            ax = axes[i, j]
            ax.imshow(np.clip((img + 1) / 2, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
        axes[i, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(task, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def make_table(paths, out=None, grid_images: int = 4) -> dict:
    """Write table.md/.csv/.png and grid_TASK.png for the runs under `paths`; returns the
    written paths."""
    runs = find_runs(paths)
    out = pathlib.Path(out or os.path.commonpath([str(r.resolve().parent) for r in runs]))
    out.mkdir(parents=True, exist_ok=True)
    t = collect(runs)
    written = {"md": out / "table.md", "csv": out / "table.csv", "png": out / "table.png"}
    jdata.atomic_write_text(written["md"], markdown(t))
    jdata.atomic_write_text(written["csv"], to_csv(t))
    plot_table(t, written["png"])
    for task in t["tasks"]:
        p = out / f"grid_{task}.png"
        if plot_grid(t, task, p, grid_images):
            written[f"grid_{task}"] = p
    return written


def plot_sweep(r: dict, path, best: dict) -> None:
    """Each metric against the swept value (jaxdiff.sweep's result `r`), `best[metric]`
    starred."""
    plt = _plt()
    xs = np.asarray(r["values"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3))
    log_x = bool(np.all(xs > 0) and xs.max() / xs.min() >= 10)
    for ax, k in zip(axes, METRICS):
        mean = np.asarray([np.nan if q[k]["mean"] is None else q[k]["mean"] for q in r["rows"]])
        std = np.asarray([np.nan if q[k]["std"] is None else q[k]["std"] for q in r["rows"]])
        ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3)
        if best[k] is not None:
            i = r["values"].index(best[k])
            ax.plot([best[k]], [mean[i]], "r*", markersize=14, label=f"best {best[k]:g}")
            ax.legend(fontsize=8)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(r["name"])
        ax.set_title(f"{k} ({'lower' if LOWER_IS_BETTER[k] else 'higher'} is better)")
    fig.suptitle(f"{r['method']} on {r['task']}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_recons(workdir, stems, labels, path) -> None:
    """truth | measurement | one column per swept value, one row per image: the PNGs
    images/STEM_LABEL.png (`stems`: the images' output stems, `labels`: the suffixes)."""
    plt = _plt()
    cols = ["truth", "measurement"] + list(labels)
    fig, axes = plt.subplots(
        len(stems), len(cols), figsize=(1.4 * len(cols), 1.5 * len(stems)), squeeze=False
    )
    for i, nm in enumerate(stems):
        for j, c in enumerate(cols):
            img = jdata.load_image(pathlib.Path(workdir) / "images" / f"{nm}_{c}.png")
            axes[i, j].imshow((img + 1) / 2, interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(c, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
