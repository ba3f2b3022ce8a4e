"""One run's report: summary.json / summary.md (mean and std per metric, seconds per image, the
config) and figure.png (ground truth | measurement | reconstruction, one row per image)."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff.metrics.lpips import variant_name
from jaxdiff.metrics.per_image import DIGITS, METRICS, stats
from jaxdiff.workdir import FIGURE, SUMMARY_JSON, SUMMARY_MD, dumps, image_path, read_png


def summarize(exp, names, skipped, store, cfg, compile_seconds, wall_seconds) -> dict:
    """The summary of a run over the images `names` (undecodable ones in `skipped`)."""
    recs = [r for r in store.ordered() if r["image"] in set(names)]
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
        "skipped": skipped,
        "diverged": [r["image"] for r in diverged],
        # reconstructions equal to the truth: PSNR +inf (null in the JSON), out of the PSNR mean
        "exact": [r["image"] for r in healthy if r.get("exact")],
        # headline means over the images that stayed finite; `diverged` names the others
        "metrics": {k: stats([r["metrics"][k] for r in healthy]) for k in METRICS},
        "seconds_per_image": stats([r["seconds"] for r in recs]),
        "compile_seconds": compile_seconds,
        "wall_seconds": wall_seconds,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"
        + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""),
        "config": cfg,
    }


def headline(s: dict) -> str:
    """One line for the console: the means with the digits they carry (DIGITS), the exact
    reconstructions counted, FID/KID or why they are missing."""
    m = s["metrics"]
    parts = []
    for k, unit in (("psnr", " dB"), ("ssim", ""), ("lpips", "")):
        mean = m[k]["mean"]
        parts.append(f"{k.upper()} {'n/a' if mean is None else f'{mean:.{DIGITS[k]}f}{unit}'}")
    exact = s.get("exact") or []
    if exact:
        parts[0] += f" (+{len(exact)} exact, PSNR inf, not in the mean)"
    sm = s.get("set_metrics") or {}
    if sm.get("missing"):
        fid = sm["missing"]
    elif sm.get("fid") is None and sm.get("note"):  # e.g. "not computable: 1 image"
        fid = f"FID/KID {sm['note']}"
    else:
        fid = ", ".join(
            f"{k.upper()} {'n/a' if sm.get(k) is None else f'{sm[k]:{fmt}}'}"
            for k, fmt in (("fid", ".2f"), ("kid", ".4g"))
        )
    return f"{s['method']}/{s['task']}: {s['num_images']} images, {', '.join(parts)}; {fid}"


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def write_summary(workdir, s: dict) -> None:
    workdir = pathlib.Path(workdir)
    jdata.atomic_write_text(workdir / SUMMARY_JSON, dumps(s, indent=2) + "\n")
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
    if s.get("exact"):
        lines.append(
            f"- exact reconstructions (equal to the truth: PSNR +inf, left out of the PSNR mean, "
            f"in the others): {len(s['exact'])} of {s['num_images']}: {s['exact']}"
        )
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
