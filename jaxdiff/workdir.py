"""A run's folder: what is in it, the record of finished images, and the lock.

    workdir/config.json         the command and full config (a restart must match, else it
                                refuses: `claim`)
    workdir/results.jsonl       one line per finished image: image, index, seed, metrics, seconds
    workdir/images/NAME_truth.png, NAME_measurement.png, NAME_recon.png
    workdir/summary.json, summary.md, figure.png (jaxdiff.summary)

Every file is written atomically (jaxdiff.data); only one process writes each file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
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
_NOT_FINGERPRINTED = ("num_images", "batch_size", "output", "remat")  # remat: memory only
# metrics.* entries of the set-level FID/KID (computed at the end of every run, never per image)
SET_METRIC_KEYS = ("inception", "fid_sqrtm", "kid_subsets", "kid_subset_size", "reference_stats")


def config_dict(config) -> dict:
    return json.loads(json.dumps(config.to_dict(), default=str))


def fingerprint(cfg: dict, ignore: tuple[str, ...] = ()) -> str:
    """A hash of what decides the results: the config without the entries that do not
    (_NOT_FINGERPRINTED, the set-level metrics, and the dotted keys `ignore`)."""
    cfg = _without(cfg, ignore)
    kept = {k: v for k, v in cfg.items() if k not in _NOT_FINGERPRINTED}
    if not kept.get("image_list"):  # added later: an empty one leaves old fingerprints alone
        kept.pop("image_list", None)
    if isinstance(kept.get("metrics"), dict):
        kept["metrics"] = {k: v for k, v in kept["metrics"].items() if k not in SET_METRIC_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _without(cfg: dict, dotted: tuple[str, ...]) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for key in dotted:
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return cfg


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


# What each command may change on a rerun of the same folder without changing its results.
IGNORED = {
    "reproduce": (),
    "sweep": (),
    "demo": ("workers", "ddpm_samples"),
    "train": ("train.num_steps", "train.log_every", "train.eval_every", "train.ckpt_every",
              "train.max_to_keep"),
}  # fmt: skip
# Folders written before config.json named its command: what each command leaves there.
_LEGACY_SIGNS = (("sweep.json", "sweep"), ("checkpoints", "train"), ("ddpm_samples.png", "demo"))


def check_folder(workdir) -> pathlib.Path:
    """`workdir` as a path, refused in one line where it, or a folder above it, is a file (the
    OS error would name neither)."""
    d = pathlib.Path(workdir)
    for part in (d, *d.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"workdir {d}: {part} is a file, not a folder (nothing was written)")
    return d


def claim(workdir, command: str, cfg: dict, *, write: bool | None = None) -> None:
    """Make `workdir` the folder of one experiment, `command` with `cfg`, before anything is
    written there: a folder holding another command's results, or this command's with another
    config, is refused (ConfigError, one line naming the difference); an empty or new folder,
    or one of this very experiment (a resume), gets its config.json. Every command that writes
    a workdir (reproduce, sweep, demo, train) calls this first. Under several processes they
    first agree on `cfg` (jaxdiff.sharding.agree); only the first writes (`write`: None = the
    first process)."""
    import jax

    from jaxdiff.sharding import agree

    agree({"config": cfg})
    write = jax.process_index() == 0 if write is None else write
    d = check_folder(workdir)
    ignore = IGNORED.get(command, ())
    fp = fingerprint(cfg, ignore)
    old_command, old = _owner(d)
    if old_command is not None and old_command != command:
        raise ConfigError(
            f"{d} holds the results of `{old_command}`, not `{command}`; use a new --workdir "
            f"for the {command} (nothing was written)"
        )
    if old is not None and old.get("fingerprint") != fp:
        changes = "; ".join(_diff(_without(old.get("config", {}), ignore), _without(cfg, ignore)))
        raise ConfigError(
            f"{d} holds {command} results of a different config ({changes or 'unknown'}); "
            "use a new --workdir or delete this one"
        )
    if write:
        d.mkdir(parents=True, exist_ok=True)
        jdata.atomic_write_json(d / CONFIG, {"command": command, "fingerprint": fp, "config": cfg})


def _owner(d: pathlib.Path) -> tuple[str | None, dict | None]:
    """(the command whose results `d` holds or None, its config.json or None)."""
    if (d / CONFIG).is_file():
        old = _read_json(d / CONFIG)
        return str(old.get("command", "reproduce")), old  # reproduce wrote the first ones
    for name, command in _LEGACY_SIGNS:
        if (d / name).exists():
            return command, None
    if (d / RESULTS).is_file():
        return "an unknown command", None
    return None, None


class ResultStore:
    """results.jsonl + config.json of a workdir; refuses a workdir made by another config.

    `write=False` (every process but the first of a multi-process run): the same checks, and
    nothing written."""

    def __init__(self, workdir, cfg: dict, write: bool = True, command: str = "reproduce"):
        self.dir = check_folder(workdir)
        self.write = write
        if write:
            self.dir.mkdir(parents=True, exist_ok=True)
        claim(self.dir, command, cfg, write=write)
        self.records: dict[str, dict] = {}
        results = self.dir / RESULTS
        if results.exists():
            for n, line in enumerate(results.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rec = json_safe(check_record(json.loads(line)))
                    except (json.JSONDecodeError, ValueError) as e:
                        raise ConfigError(
                            f"{results}: line {n} is not a result record ({e}); move the file "
                            "away to recompute every image"
                        ) from None
                    self.records[rec["image"]] = rec

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
        lines = [dumps(r) for r in self.ordered()]
        jdata.atomic_write_text(self.dir / RESULTS, "\n".join(lines) + "\n")

    def ordered(self) -> list[dict]:
        return sorted(self.records.values(), key=lambda r: (r["index"], r["image"]))


# A result record's entries and their JSON types (metrics: numbers, or null where not finite).
_RECORD_TYPES = {"image": str, "index": int, "seed": int}


def check_record(rec) -> dict:
    """`rec` if it is a result record (the driver's: `metrics`; the sweep's: `points`, each with
    its `metrics`), else ValueError naming the missing or mistyped entry."""
    if not isinstance(rec, dict):
        raise ValueError(f"a {type(rec).__name__}, not an object")
    kinds = {**_RECORD_TYPES, **({"points": list} if "points" in rec else {"metrics": dict})}
    for key, kind in kinds.items():
        if key not in rec:
            raise ValueError(f"no {key!r}")
        if not isinstance(rec[key], kind) or isinstance(rec[key], bool):
            raise ValueError(f"{key!r} is {rec[key]!r}, not {kind.__name__}")
    metrics = [("metrics", rec["metrics"])] if "metrics" in rec else []
    for i, point in enumerate(rec.get("points", [])):
        if not isinstance(point, dict) or not isinstance(point.get("metrics"), dict):
            raise ValueError(f"points[{i}] has no 'metrics' object")
        metrics.append((f"points[{i}].metrics", point["metrics"]))
    for where, values in metrics:
        for key, v in values.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"{where}.{key} is {v!r}, not a number")
    return rec


def json_safe(obj):
    """`obj` with every non-finite float as null (JSON has no Infinity or NaN). A result
    record's PSNR of +inf (a reconstruction equal to the truth) also sets `"exact": true`,
    so it is counted and stated (summary.py), not silently left out."""
    if isinstance(obj, dict):
        out = {k: json_safe(v) for k, v in obj.items()}
        m = obj.get("metrics")
        if isinstance(m, dict) and m.get("psnr") == math.inf:
            out["exact"] = True
        return out
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj, **kw) -> str:
    """The one way results are written: valid JSON (non-finite floats as null, see json_safe;
    allow_nan=False makes any other one an error, not a bare `Infinity`)."""
    return json.dumps(
        json_safe(obj), sort_keys=True, allow_nan=False, default=jdata.json_default, **kw
    )


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
        check_folder(self.path.parent)
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
