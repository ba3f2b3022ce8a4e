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

import fcntl
import hashlib
import json
import logging
import os
import pathlib
import time

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff.errors import ConfigError, RunLockedError
from jaxdiff.experiment import Experiment, build
from jaxdiff.images import Images, load_images
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

log = logging.getLogger("jaxdiff.runs")

CONFIG, RESULTS, SUMMARY_JSON, SUMMARY_MD, FIGURE = (
    "config.json",
    "results.jsonl",
    "summary.json",
    "summary.md",
    "figure.png",
)
# Config entries that do not change any image's result: a restart may change them.
_NOT_FINGERPRINTED = ("num_images", "batch_size", "output")
# metrics.* entries of the set-level FID/KID (computed at the end of every run, never per image)
SET_METRIC_KEYS = ("inception", "fid_sqrtm", "kid_subsets", "kid_subset_size", "reference_stats")


def config_dict(config) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=str))


def fingerprint(cfg: dict) -> str:
    kept = {k: v for k, v in cfg.items() if k not in _NOT_FINGERPRINTED}
    if not kept.get("image_list"):  # added later: an empty one leaves old fingerprints alone
        kept.pop("image_list", None)
    if isinstance(kept.get("metrics"), dict):
        kept["metrics"] = {k: v for k, v in kept["metrics"].items() if k not in SET_METRIC_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if (k in _NOT_FINGERPRINTED and not prefix) or (
            prefix == "metrics." and k in SET_METRIC_KEYS
        ):
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


class ResultStore:
    """results.jsonl + config.json of a workdir; refuses a workdir made by another config."""

    def __init__(self, workdir, cfg: dict):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / CONFIG
        fp = fingerprint(cfg)
        if path.exists():
            old = _read_json(path)
            if old.get("fingerprint") != fp:
                changes = "; ".join(_diff(old.get("config", {}), cfg)) or "unknown"
                raise ValueError(
                    f"{self.dir} holds results of a different config ({changes}); "
                    "use a new --workdir or delete this one"
                )
        jdata.atomic_write_json(path, {"fingerprint": fp, "config": cfg})
        self.records: dict[str, dict] = {}
        results = self.dir / RESULTS
        if results.exists():
            for n, line in enumerate(results.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                        self.records[rec["image"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ConfigError(
                            f"{results}: line {n} is not a result record ({e}); move the file "
                            "away to recompute every image"
                        ) from None

    def done(self, name: str, index: int, digest: str | None = None) -> bool:
        """Finished, for this very image: same name, folder position and (when recorded)
        content. A replaced image with the same name is recomputed."""
        rec = self.records.get(name)
        if rec is None or rec.get("index") != index:
            return False
        return digest is None or rec.get("image_sha256") in (None, digest)

    def add(self, records: list[dict]) -> None:
        for rec in records:
            self.records[rec["image"]] = rec
        lines = [json.dumps(r, sort_keys=True) for r in self.ordered()]
        jdata.atomic_write_text(self.dir / RESULTS, "\n".join(lines) + "\n")

    def ordered(self) -> list[dict]:
        return sorted(self.records.values(), key=lambda r: (r["index"], r["image"]))


def _read_json(path) -> dict:
    try:
        obj = json.loads(pathlib.Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def stem(name: str) -> str:
    return pathlib.Path(name).stem


def output_stems(names) -> dict[str, str]:
    """A file stem per input name, unique within the run: `img.png` and `img.jpg` would both
    write images/img_recon.png, so where stems collide the suffix joins them (img_png, img_jpg)."""
    names = list(names)
    counts: dict[str, int] = {}
    for n in names:
        counts[stem(n)] = counts.get(stem(n), 0) + 1
    out, used = {}, set()
    for n in names:
        s = stem(n) if counts[stem(n)] == 1 else n.replace(".", "_")
        while s in used:
            s += "_"
        used.add(s)
        out[n] = s
    return out


def image_path(workdir, name: str, kind: str, stems: dict | None = None) -> pathlib.Path:
    """kind: truth | measurement | recon; `stems` from output_stems (default: the file stem)."""
    s = stems.get(name, stem(name)) if stems else stem(name)
    return pathlib.Path(workdir) / "images" / f"{s}_{kind}.png"


def image_digest(x: np.ndarray) -> str:
    """SHA-256 of an input image as the run sees it (decoded, cropped, resized)."""
    return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()


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
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


class WorkdirLock:
    """An exclusive lock on `workdir/.lock` (flock): two runs never write one workdir at once.
    Released when the run ends or its process dies."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / ".lock"
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunLockedError(
                f"{self.path.parent} is being written by another run (pid {holder}); wait for "
                "it to finish or use another --workdir"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


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
    """Run (or resume) `config` into `workdir`; returns the summary dict (also written)."""
    t_start = time.perf_counter()
    validate_config(config)
    cfg = config_dict(config)
    exp = exp or build(config)  # model, task, method, respacing: errors before any write
    images = images or load_images(
        config.data, exp.image_size, config.num_images, exp.meta, config.get("image_list", "")
    )
    if not images.names:
        raise ConfigError(f"{config.data}: no decodable images (skipped: {images.skipped})")
    scorer = _inception_scorer(config)  # a bad weights folder fails before anything is written
    with WorkdirLock(workdir):
        return _run_locked(config, cfg, workdir, exp, images, scorer, progress, t_start)


def _run_locked(config, cfg, workdir, exp, images, scorer, progress, t_start) -> dict:
    store = ResultStore(workdir, cfg)
    n = len(images.names)
    stems = output_stems(images.names)
    digests = [image_digest(x) for x in images.arrays]
    todo = [i for i in range(n) if not store.done(images.names[i], images.index[i], digests[i])]
    batch = round_batch(config.batch_size, n)
    keys = image_keys(config.seed, images.index)
    desc = f"{exp.method.name}/{exp.task['name']}"
    bar = _progress(n, n - len(todo), desc, progress)
    runner = BatchRunner(exp, batch) if todo else None
    feats = FeatureStore(workdir, scorer.sha256) if scorer else None
    try:
        for start in range(0, len(todo), batch):
            sel = todo[start : start + batch]
            t0, c0 = time.perf_counter(), runner.compile_seconds
            out = runner(keys[sel], images.arrays[sel])
            # seconds per image: measurement + reconstruction, without the one-off compilation
            seconds = (time.perf_counter() - t0 - (runner.compile_seconds - c0)) / len(sel)
            m = compute_metrics(out["x_hat"], images.arrays[sel], **_metric_args(config))
            records = []
            for j, i in enumerate(sel):
                name = images.names[i]
                if config.output.save_images:
                    for kind, x in (
                        ("truth", images.arrays[i]),
                        ("measurement", out["y"][j]),
                        ("recon", out["x_hat"][j]),
                    ):
                        jdata.save_png(image_path(workdir, name, kind, stems), x)
                records.append(
                    {
                        "image": name,
                        "output": stems[name],
                        "image_sha256": digests[i],
                        "index": int(images.index[i]),
                        "seed": int(config.seed),
                        "metrics": {k: float(m[k][j]) for k in METRICS},
                        "seconds": seconds,
                        "diverged_at": int(out["diverged"][j]),
                    }
                )
            if feats is not None:
                feats.add([images.names[i] for i in sel], scorer.features(out["x_hat"]))
            store.add(records)
            bar.update(len(sel))
            bar.set_postfix(_running_means(store), refresh=False)
    finally:
        bar.close()
    compile_s = runner.compile_seconds if runner else 0.0
    summary = summarize(exp, images, store, cfg, compile_s, time.perf_counter() - t_start)
    summary["set_metrics"] = _set_metrics(config, workdir, exp, images, scorer, feats, stems)
    write_summary(workdir, summary)
    if config.output.save_images and config.output.figure_images:
        shown = store.ordered()[: config.output.figure_images]
        write_figure(workdir, [r["image"] for r in shown], stems)
    return summary


def _inception_scorer(config):
    directory = config.metrics.get("inception", "")
    return InceptionScorer(directory) if directory else None


def _set_metrics(config, workdir, exp, images, scorer, feats, stems) -> dict:
    """FID / KID of the reconstructions vs the ground truth, or why they are missing."""
    if scorer is None:
        return {"fid": None, "kid": None, "missing": MISSING}
    t0 = time.perf_counter()
    names = list(images.names)
    todo = [n for n in names if n not in feats.rows]
    if todo:  # done before the weights were given: from the saved reconstructions
        paths = [image_path(workdir, n, "recon", stems) for n in todo]
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
    return {"net": config.metrics.lpips_net, "mode": config.metrics.range}


def _running_means(store: ResultStore) -> dict:
    recs = store.records.values()
    return {
        k: f"{stats([r['metrics'][k] for r in recs])['mean'] or float('nan'):.3f}" for k in METRICS
    }


def summarize(exp, images, store, cfg, compile_seconds, wall_seconds) -> dict:
    recs = [r for r in store.ordered() if r["image"] in set(images.names)]
    diverged = [r for r in recs if r.get("diverged_at", -1) >= 0]
    healthy = [r for r in recs if r.get("diverged_at", -1) < 0]
    return {
        "method": exp.method.name,
        "method_kind": exp.method.kind,
        "method_info": exp.method.info,
        "task": exp.task["name"],
        "effective_task": json.loads(json.dumps(exp.task)),  # as summary.json holds it
        "model": str(exp.model_dir),
        "model_source": exp.meta.get("source"),
        "image_size": exp.image_size,
        "data": cfg.get("data"),
        "num_images": len(recs),
        "skipped": images.skipped,
        "diverged": [r["image"] for r in diverged],
        # headline means over the images that stayed finite; `diverged` names the others
        "metrics": {k: stats([r["metrics"][k] for r in healthy]) for k in METRICS},
        "seconds_per_image": stats([r["seconds"] for r in recs]),
        "compile_seconds": compile_seconds,
        "wall_seconds": wall_seconds,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "config": cfg,
    }


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def write_summary(workdir, s: dict) -> None:
    workdir = pathlib.Path(workdir)
    jdata.atomic_write_json(workdir / SUMMARY_JSON, s)
    info = ", ".join(f"{k}={v}" for k, v in s["method_info"].items()) or "-"
    op = s["effective_task"]
    lines = [
        f"# {s['method']} on {s['task']}",
        "",
        f"{s['num_images']} images of {s['data']} at {s['image_size']}px; model `{s['model']}`.",
        "",
        "| metric | mean ± std |",
        "|---|---|",
        f"| PSNR (dB) ↑ | {_fmt(s['metrics']['psnr'], 2)} |",
        f"| SSIM ↑ | {_fmt(s['metrics']['ssim'])} |",
        f"| LPIPS ({variant_name(s['config']['metrics']['lpips_net'])}) ↓ | "
        f"{_fmt(s['metrics']['lpips'])} |",
        *_set_metric_lines(s.get("set_metrics")),
        f"| seconds / image | {_fmt(s['seconds_per_image'], 2)} |",
        "",
        f"- task: `{op['operator']}` {json.dumps(op['operator_config'])}, noise {op['noise']} "
        f"sigma {op.get('sigma')} (lengths x{op['length_scale']:g} for {op['image_size']}px)",
        f"- method: {s['method_kind']} ({info}); hparams "
        f"{json.dumps(s['config']['sampler']['hparams'])}",
        f"- compile {s['compile_seconds']:.1f} s, wall {s['wall_seconds']:.1f} s on {s['devices']}",
    ]
    if s["skipped"]:
        lines.append(f"- skipped (undecodable): {', '.join(sorted(s['skipped']))}")
    if s["diverged"]:
        lines.append(
            f"- diverged (NaN/Inf, frozen at the last finite value; not in the means above): "
            f"{len(s['diverged'])} of {s['num_images']}: {s['diverged']}"
        )
    lines += ["", "```json", json.dumps(s["config"], indent=2, sort_keys=True), "```", ""]
    jdata.atomic_write_text(workdir / SUMMARY_MD, "\n".join(lines))


def _set_metric_lines(sm) -> list[str]:
    if not sm:
        return []
    if sm.get("missing"):
        return [f"| FID ↓ | {sm['missing']} |", "| KID ↓ | missing |"]
    na = sm.get("note", "n/a")
    fid = na if sm["fid"] is None else f"{sm['fid']:.3f}"
    kid = na if sm["kid"] is None else f"{sm['kid']:.5f} ± {sm['kid_std']:.5f}"
    return [f"| FID ↓ | {fid} |", f"| KID ↓ | {kid} |"]


def read_png(path) -> np.ndarray:
    return jdata.load_image(path)


def write_figure(workdir, names: list[str], stems: dict | None = None) -> None:
    """ground truth | measurement | reconstruction, one row per image, from the saved PNGs."""
    rows = []
    for name in names:
        paths = [image_path(workdir, name, k, stems) for k in ("truth", "measurement", "recon")]
        if all(p.exists() for p in paths):
            rows.append([read_png(p) for p in paths])
    if rows:
        jdata.save_png(pathlib.Path(workdir) / FIGURE, upscale(jdata.make_grid(rows)))


def upscale(img: np.ndarray, min_size: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement of a small figure (32 px images are hard to see)."""
    f = max(1, min_size // max(min(img.shape[:2]), 1))
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1) if f > 1 else img
