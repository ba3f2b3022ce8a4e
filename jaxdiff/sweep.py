"""Sweep one traced hyperparameter: every value over every image in ONE compiled call
(the library of scripts/sweep.py).

The samplers take their hyperparameters as traced arguments, so the values are one more vmap
axis of the same program (images sharded over the devices as in the driver). `noise_sigma` is the
measurement noise of the task (samplers that assume a sigma follow it). Every image keeps its key
across values, so the values see the same measurements and the same sampler noise.

run_sweep writes into its workdir: sweep.md / sweep.csv / sweep.json (mean and std of each metric
per value, the best value by `metric`), sweep.png (metric vs value, best marked), sweep_grid.png
(the reconstructions side by side), results.jsonl (one line per value and image) and
images/NAME_VALUE.png.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import pathlib
import time

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff import report
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
from jaxdiff.sharding import agreed_steps, allgather_json
from jaxdiff.workdir import claim, config_dict, output_stems


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
    """Run the sweep and write its files; returns the table as a dict.

    Under several processes (jaxdiff.sharding.initialize_distributed) every process calls this
    with the same arguments: each runs its share of the images and writes their PNGs, the first
    writes the tables, results.jsonl and the figures."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    values = [float(v) for v in values]
    config = prepare_config(config, name, values)
    exp = exp or build(config)
    local, names, skipped = load_share(
        config.data, exp.image_size, config.num_images, exp.meta, config.get("image_list", "")
    )
    if not names:
        raise ValueError(f"no decodable images in {config.data} (skipped: {sorted(skipped)})")
    claim(workdir, "sweep", {**config_dict(config), "sweep": {name: values}})
    n, stems = len(names), output_stems(names)
    batch = round_batch(config.batch_size, n)
    runner = BatchRunner(exp, batch, sweep=True)
    keys = image_keys(config.seed, local.index)
    chunks, _ = agreed_steps(list(range(len(local.names))), batch // jax.process_count())
    lead = jax.process_index() == 0
    records, seconds = [], 0.0
    from tqdm.auto import tqdm

    total = n * len(values)
    bar = tqdm(total=total, desc=f"sweep {name}", unit="img", disable=not (progress and lead))
    for sel in chunks:
        t0, c0 = time.perf_counter(), runner.compile_seconds
        out = runner(keys[sel], local.arrays[sel], {name: np.asarray(values, np.float32)})
        seconds += time.perf_counter() - t0 - (runner.compile_seconds - c0)
        mine = _write_batch(config, workdir, local, sel, values, out, stems) if sel else []
        gathered = [r for part in allgather_json(mine) for r in part]
        records += gathered
        bar.update(len(gathered))
    bar.close()
    records.sort(key=lambda r: (values.index(r["value"]), r["index"], r["image"]))
    rows = []
    for v in values:
        row = {"value": v}
        mine = [r["metrics"] for r in records if r["value"] == v]
        for k in METRICS:
            st = stats([m[k] for m in mine])
            row[k] = {"mean": st["mean"], "std": st["std"]}
        rows.append(row)
    best = best_value(rows, metric)
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
        "skipped": skipped,
        "compile_seconds": runner.compile_seconds,
        "seconds_per_image_per_value": seconds / max(n * len(values), 1),
        "config": config_dict(config),
    }
    if not lead:  # the first process writes the files; the barrier waits for it
        allgather_json(None)
        return result
    lines = [json.dumps(r, sort_keys=True) for r in records]
    jdata.atomic_write_text(workdir / "results.jsonl", "\n".join(lines) + "\n")
    jdata.atomic_write_json(workdir / "sweep.json", result)
    jdata.atomic_write_text(workdir / "sweep.md", markdown(result))
    jdata.atomic_write_text(workdir / "sweep.csv", to_csv(result))
    report.plot_sweep(result, workdir / "sweep.png", {k: best_value(rows, k) for k in METRICS})
    labels = [value_label(v) for v in values]
    shown = [stems[nm] for nm in names[:4]]
    report.plot_recons(workdir, shown, labels, workdir / "sweep_grid.png")
    allgather_json(None)
    return result


def _write_batch(config, workdir, local, sel, values, out, stems) -> list[dict]:
    """PNGs of this process's images `sel` under every value, and their records."""
    x_hat = out["x_hat"]  # (V, n, S, S, 3)
    truth = np.broadcast_to(local.arrays[sel], x_hat.shape)
    flat = compute_metrics(
        x_hat.reshape(-1, *x_hat.shape[2:]),
        truth.reshape(-1, *x_hat.shape[2:]),
        net=config.metrics.lpips_net,
        mode=config.metrics.range,
    )
    records = []
    for j, i in enumerate(sel):
        nm = stems[local.names[i]]  # unique per input file (img.png and img.jpg differ)
        jdata.save_png(workdir / "images" / f"{nm}_truth.png", local.arrays[i])
        jdata.save_png(workdir / "images" / f"{nm}_measurement.png", out["y"][0, j])
        for a, v in enumerate(values):
            jdata.save_png(workdir / "images" / f"{nm}_{value_label(v)}.png", x_hat[a, j])
            records.append(
                {
                    "value": v,
                    "image": local.names[i],
                    "output": nm,
                    "index": int(local.index[i]),
                    "seed": int(config.seed),
                    "metrics": {k: float(flat[k][a * len(sel) + j]) for k in METRICS},
                    "diverged_at": int(out["diverged"][a, j]),
                }
            )
    return records


def best_value(rows, metric):
    """The swept value with the best mean `metric` (None when no value has a finite one)."""
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
    cols = " | ".join(LABELS[k] for k in METRICS)
    lines = [head, "", f"| value | {cols} |", "|---" * (len(METRICS) + 1) + "|"]
    for row in r["rows"]:
        cells = []
        for k in METRICS:
            s, d = row[k], DIGITS[k]
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
