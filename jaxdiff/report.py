"""Tables and figures of finished runs: run folders -> one methods x tasks table, the form of
the DPS paper's tables (scripts/table.py), and the sweep's figures (jaxdiff.sweep).

make_table writes into its `out` folder: table.md (cells "PSNR / SSIM / LPIPS", mean over
images; one column per distinct task setting), table.csv (one row per method, task and metric:
mean, std, n, seconds per image, run folder), table.png (one heat-map panel per metric) and
grid_TASK.png (ground truth, then each method's own measurement and reconstruction, the same
images side by side); and results.csv (per image) beside each run's results.jsonl.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pathlib

import numpy as np

from jaxdiff import data as jdata
from jaxdiff import exports
from jaxdiff.metrics.per_image import DIGITS, LABELS, LOWER_IS_BETTER, METRICS
from jaxdiff.workdir import RESULTS, SUMMARY_JSON, image_path, read_png

log = logging.getLogger("jaxdiff.report")

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


def unfinished_runs(paths) -> list[pathlib.Path]:
    """Run folders among `paths` and their direct sub-folders that a run started (config.json
    of `reproduce`) but never summarised (no summary.json): killed or still running. The table
    leaves them out and says so."""
    from jaxdiff.workdir import CONFIG

    def unfinished(p: pathlib.Path) -> bool:
        if not (p / CONFIG).is_file() or (p / SUMMARY_JSON).is_file():
            return False
        try:
            command = json.loads((p / CONFIG).read_text()).get("command", "reproduce")
        except (OSError, ValueError, AttributeError):
            return False
        return command == "reproduce"

    out = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            out += [p] if unfinished(p) else sorted(q for q in p.iterdir() if unfinished(q))
    return out


def _order(items, preferred):
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(items, key=lambda x: (rank.get(x, len(rank)), x))


# what names a run's task but does not change it
_NOT_SETTING = ("name", "doc")


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def task_setting(s) -> dict:
    """What a run's task did, flattened: the effective (scaled) task and the data folder."""
    task = {k: v for k, v in (s.get("effective_task") or {}).items() if k not in _NOT_SETTING}
    return _flat({**task, "data": s.get("data"), "image_size": s.get("image_size")})


def _setting_text(setting: dict, keys) -> str:
    return ", ".join(f"{k}={json.dumps(setting.get(k))}" for k in keys)


def collect(runs) -> dict:
    """{"methods", "tasks", "cells": {(method, column): summary-with-run}, "settings"}: one
    column per distinct task setting. Runs of one task name with different settings get one
    column each, labelled by what differs (`settings[column]`); a repeated (method, column) is
    labelled by its folder name."""
    summaries = []
    for r in runs:
        s = json.loads((pathlib.Path(r) / SUMMARY_JSON).read_text())
        s["run"] = str(r)
        summaries.append(s)
    by_name: dict[str, dict[str, dict]] = {}
    for s in summaries:
        setting = task_setting(s)
        by_name.setdefault(s["task"], {})[json.dumps(setting, sort_keys=True)] = setting
    settings, column_of = {}, {}
    for name, variants in by_name.items():
        flat = list(variants.values())
        keys = sorted({k for v in flat for k in v if len({json.dumps(w.get(k)) for w in flat}) > 1})
        for key, setting in variants.items():
            label = f"{name} [{_setting_text(setting, keys)}]" if keys else name
            column_of[(name, key)] = label
            settings[label] = {"task": name, "differs": _setting_text(setting, keys)}
    counts = {}
    for s in summaries:
        s["column"] = column_of[(s["task"], json.dumps(task_setting(s), sort_keys=True))]
        counts[(s["method"], s["column"])] = counts.get((s["method"], s["column"]), 0) + 1
    cells = {}
    for s in summaries:
        label = s["method"]
        if counts[(s["method"], s["column"])] > 1:
            label = f"{s['method']} ({pathlib.Path(s['run']).name})"
        cells[(label, s["column"])] = s
    methods = _order({m for m, _ in cells}, METHOD_ORDER)
    methods = [m for m in methods if m != "measurement"] + (
        ["measurement"] if "measurement" in methods else []
    )
    rank = {name: i for i, name in enumerate(TASK_ORDER)}
    tasks = sorted(settings, key=lambda c: (rank.get(settings[c]["task"], len(rank)), c))
    return {"methods": methods, "tasks": tasks, "cells": cells, "settings": settings}


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
    if any(v["differs"] for v in t.get("settings", {}).values()):
        lines += ["", "Runs of one task with different settings are separate columns, named by"]
        lines += ["what differs (each run's summary.json: effective_task, data)."]
    if t.get("unfinished"):
        lines += ["", "Not in this table, unfinished (no summary.json; rerun the same command to"]
        lines += ["finish): " + ", ".join(t["unfinished"]) + "."]
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


def _records(run) -> dict:
    """{output stem: record} of a run's results.jsonl ({} when it has none)."""
    path = pathlib.Path(run) / RESULTS
    if not path.is_file():
        return {}
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r.get("output") or pathlib.Path(r["image"]).stem: r for r in recs}


def grid_layout(t: dict, task: str, max_images: int = 4) -> tuple[list[str], list[dict]]:
    """`(stems, columns)` of a task column's grid: the images every shown run has, and the
    panels of each row, `{"title", "run", "kind"}`. A run's measurement and reconstruction come
    from that run alone; the ground truth from the first run, repeated for any run whose ground
    truth differs. The "measurement" method (its output is the measurement) shows only alone."""
    ss = [(m, t["cells"][(m, task)]) for m in t["methods"] if (m, task) in t["cells"]]
    shown = [(m, s) for m, s in ss if m != "measurement"] or ss
    stems = None
    for _, s in shown:
        have = {
            p.name[: -len("_recon.png")]
            for p in (pathlib.Path(s["run"]) / "images").glob("*_recon.png")
        }
        stems = have if stems is None else stems & have
    stems = sorted(stems or [])[:max_images]
    if not stems:
        return [], []
    first = shown[0][1]["run"]
    columns = [{"title": "ground truth", "run": first, "kind": "truth"}]
    for m, s in shown:
        if s["run"] != first and any(
            not np.array_equal(
                read_png(image_path(first, n, "truth")), read_png(image_path(s["run"], n, "truth"))
            )
            for n in stems
        ):
            columns.append({"title": f"{m}\nground truth", "run": s["run"], "kind": "truth"})
        columns.append({"title": f"{m}\nmeasurement", "run": s["run"], "kind": "measurement"})
        columns.append(
            {"title": f"{m} reconstruction\n{_cell(s)}", "run": s["run"], "kind": "recon"}
        )
    return stems, columns


def plot_grid(t: dict, task: str, path, max_images: int = 4) -> bool:
    """One row per image, each method's measurement and reconstruction from its own run,
    titled with the method and its means, each reconstruction with its own metrics.

    The panels are tiled into one image (`data.make_grid`) and drawn on one axes with their
    labels as text (one axes per panel took ~5 s per figure in matplotlib)."""
    stems, columns = grid_layout(t, task, max_images)
    if not stems:
        return False
    plt = _plt()
    records = {c["run"]: _records(c["run"]) for c in columns}
    rows = [
        [read_png(pathlib.Path(c["run"]) / "images" / f"{stem_}_{c['kind']}.png") for c in columns]
        for stem_ in stems
    ]
    h, w = np.asarray(rows[0][0]).shape[:2]  # make_grid's panel size (the ground truth's)
    # the gap under each row holds the reconstructions' metrics; a band above, the column titles
    pad, top = round(0.3 * h), round(0.5 * h)
    grid = jdata.make_grid(rows, pad=pad)
    canvas = np.concatenate([np.ones((top, grid.shape[1], 3), np.float32), grid])
    fig = plt.figure(figsize=(1.7 * len(columns), 1.7 * len(stems) + 0.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.clip((canvas + 1) / 2, 0, 1), interpolation="nearest")
    ax.set_axis_off()
    xs = [pad + j * (w + pad) + w / 2 for j in range(len(columns))]
    for x, c in zip(xs, columns):
        ax.text(x, top + pad - 1, c["title"], ha="center", va="bottom", fontsize=6)
    for i, stem_ in enumerate(stems):
        y = top + pad + i * (h + pad)
        ax.text(pad - 1, y + h / 2, stem_, ha="right", va="center", rotation=90, fontsize=7)
        for x, c in zip(xs, columns):
            rec = records[c["run"]].get(stem_)
            if c["kind"] == "recon" and rec:
                ax.text(x, y + h + 1, _record_text(rec), ha="center", va="top", fontsize=6)
    ax.set_title(f"task: {task}", fontsize=9)
    _save(fig, path)
    plt.close(fig)
    return True


def _record_text(rec: dict) -> str:
    m = rec.get("metrics") or {}
    vals = [m.get(k) for k in METRICS]
    return " / ".join("n/a" if v is None else f"{v:.{DIGITS[k]}f}" for k, v in zip(METRICS, vals))


def make_table(paths, out=None, grid_images: int = 4) -> dict:
    """Write table.md/.csv/.png, grid_TASK.png and each run's results.csv for the runs under
    `paths`; returns the written paths (table files and grids)."""
    runs = find_runs(paths)
    out = pathlib.Path(out or os.path.commonpath([str(r.resolve().parent) for r in runs]))
    out.mkdir(parents=True, exist_ok=True)
    t = collect(runs)
    t["unfinished"] = [str(r) for r in unfinished_runs(paths)]
    for r in t["unfinished"]:
        log.warning("%s: unfinished run (no summary.json), not in the table", r)
    written = {"md": out / "table.md", "csv": out / "table.csv", "png": out / "table.png"}
    jdata.atomic_write_text(written["md"], markdown(t))
    jdata.atomic_write_text(written["csv"], to_csv(t))
    plot_table(t, written["png"])
    seen: dict[str, int] = {}
    for column in t["tasks"]:
        name = t["settings"][column]["task"]
        seen[name] = seen.get(name, 0) + 1
        key = (
            f"grid_{name}" if not t["settings"][column]["differs"] else f"grid_{name}_{seen[name]}"
        )
        if plot_grid(t, column, out / f"{key}.png", grid_images):
            written[key] = out / f"{key}.png"
    for run in runs:
        try:
            exports.write_results_csv(run)
        except OSError as e:  # a read-only run folder: the table itself is done
            log.warning("%s: results.csv not written (%s)", run, e)
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
