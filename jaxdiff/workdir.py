"""A run's folder: what is in it, the record of finished images, and the lock.

    workdir/config.json         the full config (a restart must match it, else it refuses)
    workdir/results.jsonl       one line per finished image: image, index, seed, metrics, seconds
    workdir/images/NAME_truth.png, NAME_measurement.png, NAME_recon.png
    workdir/summary.json, summary.md, figure.png (jaxdiff.summary)

Every file is written atomically (jaxdiff.data); only one process writes each file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib

import numpy as np

from jaxdiff import data as jdata
from jaxdiff.errors import ConfigError, RunLockedError

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
    """results.jsonl + config.json of a workdir; refuses a workdir made by another config.

    `write=False` (every process but the first of a multi-process run): the same checks, and
    nothing written."""

    def __init__(self, workdir, cfg: dict, write: bool = True):
        self.dir = pathlib.Path(workdir)
        self.write = write
        if write:
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
        if write:
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
        if not self.write:
            return
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


def read_png(path) -> np.ndarray:
    return jdata.load_image(path)
