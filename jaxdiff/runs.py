"""A resumable run: every image of a folder through one experiment, results kept in a workdir.

    workdir/config.json         the full config (a restart must match it, else it refuses)
    workdir/results.jsonl       one line per finished image: image, index, seed, metrics, seconds
    workdir/images/NAME_truth.png, NAME_measurement.png, NAME_recon.png
    workdir/summary.json, summary.md   mean and std per metric, seconds per image, the config
    workdir/figure.png          ground truth | measurement | reconstruction, one row per image

Every file is written atomically (jaxdiff.data), the PNGs of a batch before its results lines,
so a run killed at any moment and restarted with the same workdir skips the finished images,
recomputes the rest and ends with the same results as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib
import time

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff import xla_options
from jaxdiff.errors import ConfigError
from jaxdiff.experiment import Experiment, build
from jaxdiff.exports import write_results_csv
from jaxdiff.images import Images, decode, list_entries, load_share
from jaxdiff.metrics.distribution import (
    MISSING,
    FeatureStore,
    InceptionScorer,
    reference_features,
    set_metrics,
)
from jaxdiff.metrics.lpips import VARIANTS, variant_name
from jaxdiff.metrics.per_image import METRICS, compute_metrics, stats
from jaxdiff.runner import BatchRunner, image_keys, round_batch
from jaxdiff.sharding import EXECUTION, agree, agreed_steps, allgather_json, process_share
from jaxdiff.summary import summarize, write_figure, write_summary
from jaxdiff.workdir import (
    SUMMARY_JSON,
    ResultStore,
    WorkdirLock,
    config_dict,
    image_digest,
    image_path,
    json_safe,
    output_stems,
    read_png,
)

log = logging.getLogger("jaxdiff.runs")

SEED_RANGE = 2**32


def validate_config(config) -> None:
    """Every setting a run reads before its first image, checked before anything is written."""
    problems = []
    for key in ("batch_size", "num_images"):
        v = config.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(f"{key}={v!r} must be an integer >= 0 (0 = automatic / all)")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_RANGE:
        problems.append(f"seed={seed!r} must be an integer in [0, 2^32)")
    metrics = config.get("metrics", {})
    try:
        variant_name(metrics.get("lpips_net", "vgg"))
    except (KeyError, ValueError):
        known = ", ".join(VARIANTS)
        problems.append(f"metrics.lpips_net={metrics.get('lpips_net')!r} (known: {known})")
    if metrics.get("range", "clip") not in ("clip", "minmax"):
        problems.append(f"metrics.range={metrics.get('range')!r} must be 'clip' or 'minmax'")
    problems += _task_problems(config.get("task"))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _task_problems(task) -> list[str]:
    """task.operator_config's keys against what the operator takes: a preset's leftover setting
    (sr2's `factor` after --config.task.operator=motion_blur) is named, not a TypeError."""
    import inspect

    from jaxdiff.operators import OPERATORS

    if not task or "operator" not in task:
        return []
    name = task["operator"]
    if name not in OPERATORS:
        return [f"task.operator={name!r} (known: {', '.join(OPERATORS.names())})"]
    params = inspect.signature(OPERATORS.get(name).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    takes = [p for p in params if p not in ("self", "image_shape")]
    extra = sorted(set(task.get("operator_config", {})) - set(takes))
    if extra:
        keys = ", ".join(f"task.operator_config.{k}" for k in extra)
        return [f"{keys}: not a setting of operator {name!r} (it takes: {', '.join(takes)})"]
    return []


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled)


def run(
    config,
    workdir,
    *,
    exp: Experiment | None = None,
    images: Images | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) `config` into `workdir`; returns the summary dict (also written).

    Under several processes (jaxdiff.sharding.initialize_distributed) every process calls this
    with the same arguments: each decodes and runs its share of the images and writes their
    PNGs; the first process writes config.json, results.jsonl, the summary and the figure.
    `images`: already decoded images (the demo), else `config.data`.
    """
    t_start = time.perf_counter()
    validate_config(config)
    cfg = config_dict(config)
    # model, task, method, respacing: errors before any write
    exp = exp or build(config, progress=progress)
    image_list = config.get("image_list", "")
    if images is None:
        local, names, skipped = load_share(
            config.data, exp.image_size, config.num_images, exp.meta, image_list
        )
    else:
        local = images.take(process_share(len(images.names)))
        names, skipped = list(images.names), dict(images.skipped)
    if not names:
        raise ConfigError(f"{config.data}: no decodable images (skipped: {skipped})")
    scorer = _inception_scorer(config)  # a bad weights folder fails before anything is written
    # every process runs this config on this model and this listing, or all stop here
    agree(
        {"config": cfg, "model": _model_fingerprint(exp), "data listing": _listing(names, skipped)}
    )
    lead = jax.process_index() == 0
    with WorkdirLock(workdir) if lead else contextlib.nullcontext():
        store = ResultStore(workdir, cfg, write=lead)
        stems = output_stems(names)
        job = _Run(config, workdir, exp, local, names, stems=stems, store=store, scorer=scorer)
        job.images(progress)
        if not lead:  # the first process writes the summary; the barrier waits for it
            allgather_json(None)
            return json.loads((pathlib.Path(workdir) / SUMMARY_JSON).read_text())
        compile_s = job.runner.compile_seconds if job.runner else 0.0
        wall = time.perf_counter() - t_start
        summary = summarize(exp, names, skipped, store, cfg, compile_s, wall)
        truth = images if images is not None else local
        if jax.process_count() > 1 and images is None and scorer is not None:
            # the reference FID features need every image: process 0 decodes the run's names
            by_name = {e.name: e for e in list_entries(config.data, exp.meta, image_list)}
            truth = decode([by_name[n] for n in names], exp.image_size)
        summary["set_metrics"] = _set_metrics(config, workdir, exp, truth, scorer, job)
        write_summary(workdir, summary)
        write_results_csv(workdir)  # one row per image, beside results.jsonl
        if config.output.save_images and config.output.figure_images:
            shown = store.ordered()[: config.output.figure_images]
            write_figure(workdir, [r["image"] for r in shown], job.stems)
        allgather_json(None)
        return summary


class _Run:
    """The images of one run through the runner, batch by batch, on every process: each
    process's own images in its rows of the batch, their records gathered to the first."""

    def __init__(self, config, workdir, exp, local: Images, names, *, stems, store, scorer):
        self.config, self.workdir, self.exp, self.local = config, workdir, exp, local
        self.names, self.stems, self.store, self.scorer = names, stems, store, scorer
        self.feats = FeatureStore(workdir, scorer.sha256) if scorer and store.write else None
        self.runner = None

    def images(self, progress: bool) -> None:
        config, local, store = self.config, self.local, self.store
        digests = [image_digest(x) for x in local.arrays]
        todo = [
            i
            for i, (name, index) in enumerate(zip(local.names, local.index))
            if not store.done(name, index, digests[i])
        ]
        batch = round_batch(config.batch_size, len(self.names))
        # this process's rows of every batch
        chunks, remaining = agreed_steps(todo, batch // jax.process_count())
        keys = image_keys(config.seed, local.index)
        desc = f"{self.exp.method.name}/{self.exp.task['name']}"
        total = len(self.names)
        bar = _progress(total, total - remaining, desc, progress and store.write)
        self.runner = BatchRunner(self.exp, batch) if chunks else None
        try:
            for sel in chunks:
                records, feats = self._batch(sel, keys, digests)
                gathered = allgather_json({"records": records, "feats": feats})
                for part in gathered:
                    store.add(part["records"])
                    if self.feats is not None and part["feats"]:
                        names = [r["image"] for r in part["records"]]
                        self.feats.add(names, np.asarray(part["feats"], np.float32))
                bar.update(sum(len(part["records"]) for part in gathered))
                bar.set_postfix(_running_means(store), refresh=False)
        finally:
            bar.close()

    def _batch(self, sel, keys, digests):
        """Run this process's images `sel` (possibly none: padding only) and write their PNGs;
        returns their records and Inception features."""
        config, local, workdir = self.config, self.local, self.workdir
        runner = self.runner
        t0, c0, w0 = time.perf_counter(), runner.compile_seconds, runner.wait_seconds
        out = runner(keys[sel], local.arrays[sel])
        if not sel:
            return [], []
        # seconds per image: measurement + reconstruction, without the one-off compilation and
        # the wait for another thread's program (sharding.EXECUTION)
        overhead = runner.compile_seconds - c0 + runner.wait_seconds - w0
        seconds = (time.perf_counter() - t0 - overhead) / len(sel)
        with EXECUTION:  # the metrics' programs too: one program at a time
            m = compute_metrics(out["x_hat"], local.arrays[sel], **_metric_args(config))
        records = []
        for j, i in enumerate(sel):
            name = local.names[i]
            if config.output.save_images:
                for kind, x in (
                    ("truth", local.arrays[i]),
                    ("measurement", out["y"][j]),
                    ("recon", out["x_hat"][j]),
                ):
                    jdata.save_png(image_path(workdir, name, kind, self.stems), x)
            records.append(
                json_safe(
                    {
                        "image": name,
                        "output": self.stems[name],
                        "image_sha256": digests[i],
                        "index": int(local.index[i]),
                        "seed": int(config.seed),
                        "metrics": {k: float(m[k][j]) for k in METRICS},
                        "seconds": seconds,
                        "diverged_at": int(out["diverged"][j]),
                    }
                )
            )
        feats = self.scorer.features(out["x_hat"]).tolist() if self.scorer else []
        return records, feats


def _model_fingerprint(exp) -> str:
    """The model as its sidecar describes it (architecture, diffusion, params_sha256 when
    recorded): equal on processes that load the same checkpoint from different paths."""
    meta = json.dumps(exp.meta, sort_keys=True, default=str)
    return hashlib.sha256(meta.encode()).hexdigest()[:16]


def _listing(names, skipped) -> str:
    text = json.dumps({"names": list(names), "skipped": sorted(skipped)}, sort_keys=True)
    return f"{len(names)} images, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _inception_scorer(config):
    directory = config.metrics.get("inception", "")
    return InceptionScorer(directory) if directory else None


def _set_metrics(config, workdir, exp, images, scorer, job) -> dict:
    """FID / KID of the reconstructions vs the ground truth `images`, or why they are missing."""
    if scorer is None:
        return {"fid": None, "kid": None, "missing": MISSING}
    t0 = time.perf_counter()
    feats, names = job.feats, list(images.names)
    todo = [n for n in names if n not in feats.rows]
    if todo:  # done before the weights were given: from the saved reconstructions
        paths = [image_path(workdir, n, "recon", job.stems) for n in todo]
        absent = [str(p) for p in paths if not p.exists()]
        if absent:
            raise FileNotFoundError(
                f"FID: no features and no saved reconstruction for {absent[:3]}: rerun in a "
                "new --workdir with --config.metrics.inception"
            )
        feats.add(todo, scorer.features(np.stack([read_png(p) for p in paths])))
    recon = np.stack([feats.rows[n] for n in names])
    m = config.metrics
    cache = m.get("reference_stats", "") or None
    ref, path, cached = reference_features(scorer, config.data, images, exp.image_size, cache)
    out = set_metrics(
        recon,
        ref,
        m.get("fid_sqrtm", "scipy"),
        int(m.get("kid_subsets", 100)),
        int(m.get("kid_subset_size", 1000)),
    )
    out.update(inception=str(scorer.dir), reference=str(path), reference_cached=cached)
    out["seconds"] = time.perf_counter() - t0
    return out


def _metric_args(config) -> dict:
    return {
        "net": config.metrics.lpips_net,
        "mode": config.metrics.range,
        "compiler_options": xla_options.compiler_options(),
    }


def _running_means(store: ResultStore) -> dict:
    recs = store.records.values()
    return {
        k: f"{stats([r['metrics'][k] for r in recs])['mean'] or float('nan'):.3f}" for k in METRICS
    }
