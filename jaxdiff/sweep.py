"""Sweep traced hyperparameters: every value (or every point of a grid over several
hyperparameters) over every image in ONE compiled call (the library of scripts/sweep.py).

The samplers take their hyperparameters as traced arguments, so the values are one more vmap
axis of the same program (images sharded over the devices as in the driver). `noise_sigma` is the
measurement noise of the task (samplers that assume a sigma follow it). Every image keeps its key
across values, so the values see the same measurements and the same sampler noise. Several
hyperparameters sweep their product (a grid), still one program.

Everything is checked before anything compiles or is written: the config as the driver checks it,
each name against the method's traced hyperparameters, each value against its declared range
(jaxdiff.samplers.base.Range), finite and given once.

The workdir is a run folder (jaxdiff.workdir): config.json (the config and the sweep; a restart
must match it), results.jsonl (one line per finished image, with every point's metrics), written
after each batch, so an interrupted sweep restarted with the same workdir skips its finished
images. At the end: sweep.md / sweep.csv / sweep.json (mean and std of each metric per point over
the images that stayed finite, diverged images counted, the best point by `metric` among those
where no image diverged, flagged when it lies at the edge of a swept range), sweep.png (metric vs
value, or a heat map of `metric` for a two-hyperparameter grid), sweep_grid.png (the
reconstructions side by side) and images/NAME_LABEL.png.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import math
import pathlib
import time

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff import report, xla_options
from jaxdiff.errors import ConfigError
from jaxdiff.experiment import build
from jaxdiff.images import load_share
from jaxdiff.metrics.per_image import (
    DIGITS,
    LABELS,
    LOWER_IS_BETTER,
    METRICS,
    compute_metrics,
    stats,
)
from jaxdiff.runner import BatchRunner, image_keys, round_batch
from jaxdiff.runs import validate_config
from jaxdiff.sharding import agreed_steps, allgather_json
from jaxdiff.workdir import ResultStore, WorkdirLock, config_dict, image_digest, output_stems


# --- what to sweep -------------------------------------------------------------------------------
def parse_sweep(spec: str) -> tuple[str, list[float]]:
    """ "scale:0.1,0.3,1" -> ("scale", [0.1, 0.3, 1.0]); errors name the bad part."""
    if not spec or ":" not in spec:
        raise ConfigError(f"--sweep must be NAME:V1,V2,..., got {spec!r}")
    name, vals = spec.split(":", 1)
    name = name.strip()
    parts = [v.strip() for v in vals.split(",") if v.strip()]
    if not name or not parts:
        raise ConfigError(f"--sweep {spec!r}: need a name and at least one value")
    other = [p for p in parts if ":" in p]
    if other:
        raise ConfigError(
            f"--sweep {spec!r}: one hyperparameter per --sweep ({other[0]!r} is not a value); "
            f"for a grid repeat the flag: --sweep={name}:... --sweep={other[0].split(':')[0]}:..."
        )
    values = []
    for p in parts:
        try:
            values.append(float(p))
        except ValueError:
            raise ConfigError(f"--sweep {spec!r}: {p!r} is not a number") from None
    check_values(name, values)
    return name, values


def parse_sweeps(specs) -> dict[str, list[float]]:
    """Several --sweep flags: the grid {name: values}, in the order given."""
    axes: dict[str, list[float]] = {}
    for spec in [specs] if isinstance(specs, str) else list(specs):
        name, values = parse_sweep(spec)
        if name in axes:
            raise ConfigError(f"--sweep: {name!r} given twice; give its values in one --sweep")
        axes[name] = values
    if not axes:
        raise ConfigError("--sweep: give at least one NAME:V1,V2,...")
    return axes


def check_values(name: str, values) -> None:
    """Finite, and distinct as the program sees them (float32): 0.5 twice, or 0.5 and
    0.50000001 (one float32), would run one setting twice under two labels."""
    values = [float(v) for v in values]
    if not values:
        raise ConfigError(f"--sweep {name}: no values")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"--sweep {name}: {bad[0]} is not a finite number")
    seen: dict[np.float32, float] = {}
    for v in values:
        f = np.float32(v)
        if f in seen:
            same = "given twice" if seen[f] == v else f"and {seen[f]!r} are one float32 value"
            raise ConfigError(f"--sweep {name}: {v!r} {same}; give each value once")
        seen[f] = v


def value_label(v: float) -> str:
    """A short label that tells distinct float32 values apart (0.5 vs 0.5000001): `%g` when
    that names the same float32, else the shortest float32 repr."""
    short = f"{v:g}"
    if np.float32(float(short)) == np.float32(v):
        return short
    return np.format_float_positional(np.float32(v), trim="-", unique=True)


def point_label(point: dict) -> str:
    """The file/column label of one grid point: the value alone for a one-hyperparameter
    sweep, name=value joined by commas for a grid."""
    if len(point) == 1:
        return value_label(next(iter(point.values())))
    return ",".join(f"{k}={value_label(v)}" for k, v in point.items())


def grid_points(axes: dict) -> list[dict]:
    """Every combination of the axes' values, the last axis fastest."""
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]


def prepare_config(config, axes: dict):
    """A copy of `config` able to run every value: a static bound the sampler declares for a
    swept hparam (SDEdit's max_t0 for t0) covers its largest value; the swept hparams leave
    sampler.hparams (their values are the sweep's)."""
    from jaxdiff.samplers import SAMPLERS

    config = copy.deepcopy(config)
    with config.unlocked():
        bounds = SAMPLERS.get(config.method).bounds if config.method in SAMPLERS else {}
        for name, values in axes.items():
            if name in bounds:
                config.sampler.options[bounds[name]] = float(max(values))
            if name in config.sampler.hparams:  # the sweep sets it (config.json: "sweep")
                del config.sampler.hparams[name]
    return config


# --- the run -------------------------------------------------------------------------------------
def run_sweep(
    config, workdir, name, values=None, *, metric="lpips", progress=True, exp=None
) -> dict:
    """Run (or resume) the sweep and write its files; returns the table as a dict.

    `name, values`: one hyperparameter; or `name` a dict {name: values} (a grid over their
    product). Under several processes (jaxdiff.sharding.initialize_distributed) every process
    calls this with the same arguments: each runs its share of the images and writes their PNGs,
    the first writes the tables, results.jsonl and the figures."""
    axes = dict(name) if isinstance(name, dict) else {name: list(values)}
    axes = {k: [float(v) for v in vs] for k, vs in axes.items()}
    for k, vs in axes.items():
        check_values(k, vs)
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: known {', '.join(METRICS)}")
    validate_config(config)  # as the driver: seed, counts, metrics
    config = prepare_config(config, axes)
    # also checks the config's own hparams against their ranges
    exp = exp or build(config, progress=progress)
    exp.check_hparams(axes, "--sweep")
    points = grid_points(axes)
    workdir = pathlib.Path(workdir)
    local, names, skipped = load_share(
        config.data, exp.image_size, config.num_images, exp.meta, config.get("image_list", "")
    )
    if not names:
        raise ConfigError(f"no decodable images in {config.data} (skipped: {sorted(skipped)})")
    cfg = config_dict(config)
    cfg["sweep"] = axes  # part of the fingerprint: a restart must sweep the same values
    lead = jax.process_index() == 0
    with WorkdirLock(workdir) if lead else contextlib.nullcontext():
        store = ResultStore(workdir, cfg, write=lead, command="sweep")
        job = _Sweep(config, workdir, exp, local, output_stems(names), points, store)
        job.images(progress)
        result = summarize(exp, axes, points, names, skipped, store, metric, cfg)
        result["compile_seconds"] = job.runner.compile_seconds if job.runner else 0.0
        if not lead:  # the first process writes the files; the barrier waits for it
            allgather_json(None)
            return result
        write_outputs(workdir, result, [job.stems[n] for n in names[:4]])
        allgather_json(None)
        return result


class _Sweep:
    """The images through the sweep's runner batch by batch, as the driver's runs._Run: each
    batch's PNGs, then its records (gathered to the first process, which appends them)."""

    def __init__(self, config, workdir, exp, local, stems, points, store):
        self.config, self.workdir, self.exp, self.local = config, workdir, exp, local
        self.stems, self.points, self.store = stems, points, store
        self.runner = None

    def images(self, progress: bool) -> None:
        config, local, store = self.config, self.local, self.store
        digests = [image_digest(x) for x in local.arrays]
        todo = [
            i
            for i, (nm, index) in enumerate(zip(local.names, local.index))
            if not store.done(nm, index, digests[i])
        ]
        n = len(self.stems)
        batch = round_batch(config.batch_size, n)
        chunks, remaining = agreed_steps(todo, batch // jax.process_count())
        keys = image_keys(config.seed, local.index)
        hp = {k: np.asarray([p[k] for p in self.points], np.float32) for k in self.points[0]}
        self.runner = BatchRunner(self.exp, batch, sweep=True) if chunks else None
        from tqdm.auto import tqdm

        desc = f"sweep {' x '.join(self.points[0])}"
        enabled = progress and store.write
        bar = tqdm(total=n, initial=n - remaining, desc=desc, unit="img", disable=not enabled)
        try:
            for sel in chunks:
                t0, c0 = time.perf_counter(), self.runner.compile_seconds
                out = self.runner(keys[sel], local.arrays[sel], hp)
                spent = time.perf_counter() - t0 - (self.runner.compile_seconds - c0)
                mine = self._records(sel, out, digests, spent) if sel else []
                gathered = [r for part in allgather_json(mine) for r in part]
                store.add(gathered)  # after the PNGs: a restart skips exactly these images
                bar.update(len(gathered))
        finally:
            bar.close()

    def _records(self, sel, out, digests, seconds) -> list[dict]:
        """PNGs of this process's images `sel` under every point, and their records."""
        config, local, workdir, points = self.config, self.local, self.workdir, self.points
        x_hat = out["x_hat"]  # (P, n, S, S, 3)
        truth = np.broadcast_to(local.arrays[sel], x_hat.shape)
        flat = compute_metrics(
            x_hat.reshape(-1, *x_hat.shape[2:]),
            truth.reshape(-1, *x_hat.shape[2:]),
            net=config.metrics.lpips_net,
            mode=config.metrics.range,
            compiler_options=xla_options.compiler_options(),
        )
        per = seconds / max(len(sel) * len(points), 1)
        records = []
        for j, i in enumerate(sel):
            nm = self.stems[local.names[i]]  # unique per input file (img.png and img.jpg differ)
            jdata.save_png(workdir / "images" / f"{nm}_truth.png", local.arrays[i])
            jdata.save_png(workdir / "images" / f"{nm}_measurement.png", out["y"][0, j])
            results = []
            for a, p in enumerate(points):
                jdata.save_png(workdir / "images" / f"{nm}_{point_label(p)}.png", x_hat[a, j])
                results.append(
                    {
                        "hparams": p,
                        "metrics": {k: float(flat[k][a * len(sel) + j]) for k in METRICS},
                        "diverged_at": int(out["diverged"][a, j]),
                    }
                )
            records.append(
                {
                    "image": local.names[i],
                    "output": nm,
                    "image_sha256": digests[i],
                    "index": int(local.index[i]),
                    "seed": int(config.seed),
                    "seconds_per_point": per,
                    "points": results,
                }
            )
        return records


# --- the table -----------------------------------------------------------------------------------
def summarize(exp, axes, points, names, skipped, store, metric, cfg) -> dict:
    """Per point: mean and std of each metric over the images that stayed finite, and the
    images that diverged (as the driver's summaries: named, never in the means). The best
    point by `metric` is picked among the points where no image diverged."""
    recs = [r for r in store.ordered() if r["image"] in set(names)]
    rows = []
    for a, p in enumerate(points):
        res = [(r["image"], r["points"][a]) for r in recs]
        healthy = [q for _, q in res if q["diverged_at"] < 0]
        row = {"hparams": p, "num_images": len(res)}
        if len(p) == 1:
            row["value"] = next(iter(p.values()))
        row["diverged"] = [nm for nm, q in res if q["diverged_at"] >= 0]
        for k in METRICS:
            st = stats([q["metrics"][k] for q in healthy])
            row[k] = {"mean": st["mean"], "std": st["std"]}
        rows.append(row)
    best = best_row(rows, metric)
    edges = []
    if best is not None:
        edges = [
            k for k, vs in axes.items() if len(vs) > 1 and best["hparams"][k] in (min(vs), max(vs))
        ]
    names_ = list(axes)
    seconds = [r.get("seconds_per_point", 0.0) for r in recs]
    return {
        "name": " x ".join(names_),
        "axes": axes,
        "values": axes[names_[0]] if len(names_) == 1 else [p for p in points],
        "metric": metric,
        "best": None if best is None else (best.get("value", best["hparams"])),
        "best_hparams": None if best is None else best["hparams"],
        "best_at_edge": edges,
        "rows": rows,
        "method": exp.method.name,
        "task": exp.task["name"],
        "effective_task": exp.task,
        "num_images": len(recs),
        "skipped": skipped,
        "seconds_per_image_per_value": float(np.mean(seconds)) if seconds else 0.0,
        "config": cfg,
    }


def best_row(rows, metric):
    """The row with the best mean `metric` among those where no image diverged (None when
    there is none)."""
    ok = [r for r in rows if r[metric]["mean"] is not None and not r["diverged"]]
    if not ok:
        return None
    pick = min if LOWER_IS_BETTER[metric] else max
    return pick(ok, key=lambda r: r[metric]["mean"])


def best_value(rows, metric):
    """The best row's value (one hyperparameter) or its {name: value} (a grid)."""
    row = best_row(rows, metric)
    return None if row is None else row.get("value", row["hparams"])


def markdown(r: dict) -> str:
    axes = r["axes"]
    head = f"# {r['method']} on {r['task']}: sweep of "
    head += " x ".join(f"`{k}`" for k in axes) + f" ({r['num_images']} images)"
    if r["best_hparams"] is None:
        best = "no point where every image stayed finite"
    else:
        shown = ", ".join(f"{k} = {value_label(v)}" for k, v in r["best_hparams"].items())
        best = f"Best by {r['metric']}: **{shown}**"
        for k in r["best_at_edge"]:
            lo, hi = min(axes[k]), max(axes[k])
            best += (
                f"\n\n**{k} = {value_label(r['best_hparams'][k])} is at the edge of the swept "
                f"range [{value_label(lo)}, {value_label(hi)}]**: the best may lie beyond it"
            )
    cols = " | ".join(LABELS[k] for k in METRICS)
    names = " | ".join(axes)
    lines = [head, "", best, "", f"| {names} | {cols} | diverged |"]
    lines.append("|---" * (len(axes) + len(METRICS) + 1) + "|")
    for row in r["rows"]:
        cells = []
        for k in METRICS:
            s, d = row[k], DIGITS[k]
            cells.append("n/a" if s["mean"] is None else f"{s['mean']:.{d}f} ± {s['std']:.{d}f}")
        mark = " ★" if row["hparams"] == r["best_hparams"] else ""
        vals = " | ".join(value_label(v) for v in row["hparams"].values())
        div = f"{len(row['diverged'])} of {row['num_images']}" if row["diverged"] else "0"
        lines.append(f"| {vals}{mark} | " + " | ".join(cells) + f" | {div} |")
    n_points = len(r["rows"])
    lines += [
        "",
        "Means over the images that stayed finite; a point where an image diverged (NaN/Inf, "
        "frozen at its last finite value) is never picked as the best.",
        "",
        f"One compiled call for all {n_points} points "
        f"(compile {r['compile_seconds']:.1f} s, "
        f"{r['seconds_per_image_per_value']:.2f} s per image and point).",
    ]
    return "\n".join(lines) + "\n"


def to_csv(r: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    stat_cols = [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
    w.writerow(list(r["axes"]) + stat_cols + ["diverged"])
    for row in r["rows"]:
        stat = [row[k][s] for k in METRICS for s in ("mean", "std")]
        w.writerow(list(row["hparams"].values()) + stat + [len(row["diverged"])])
    return buf.getvalue()


def write_outputs(workdir, result: dict, shown_stems) -> None:
    """The tables and figures of a finished sweep (the first process only)."""
    jdata.atomic_write_json(workdir / "sweep.json", result)
    jdata.atomic_write_text(workdir / "sweep.md", markdown(result))
    jdata.atomic_write_text(workdir / "sweep.csv", to_csv(result))
    rows, axes = result["rows"], result["axes"]
    if len(axes) == 1:
        report.plot_sweep(result, workdir / "sweep.png", {k: best_value(rows, k) for k in METRICS})
    elif len(axes) == 2:
        _plot_grid(result, workdir / "sweep.png")
    labels = [point_label(row["hparams"]) for row in rows]
    report.plot_recons(workdir, shown_stems, labels, workdir / "sweep_grid.png")


def _plot_grid(r: dict, path) -> None:
    """A heat map of the sweep's metric over a two-hyperparameter grid (diverged points blank),
    the best point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (a, va), (b, vb) = r["axes"].items()
    k = r["metric"]
    grid = np.full((len(va), len(vb)), np.nan)
    for row in r["rows"]:
        m = row[k]["mean"]
        if m is not None and not row["diverged"]:
            grid[va.index(row["hparams"][a]), vb.index(row["hparams"][b])] = m
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(vb), 1.0 + 0.6 * len(va)))
    im = ax.imshow(grid, cmap="viridis_r" if LOWER_IS_BETTER[k] else "viridis", aspect="auto")
    ax.set_xticks(range(len(vb)), [value_label(v) for v in vb])
    ax.set_yticks(range(len(va)), [value_label(v) for v in va])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    if r["best_hparams"] is not None:
        i, j = va.index(r["best_hparams"][a]), vb.index(r["best_hparams"][b])
        ax.plot([j], [i], "r*", markersize=14)
    fig.colorbar(im, ax=ax, label=k)
    ax.set_title(f"{r['method']} on {r['task']}: {k}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    jdata.atomic_write_bytes(path, buf.getvalue())


__all__ = [
    "best_value",
    "check_values",
    "grid_points",
    "markdown",
    "parse_sweep",
    "parse_sweeps",
    "point_label",
    "run_sweep",
    "value_label",
]
