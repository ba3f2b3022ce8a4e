"""FID and KID of a run: reconstructions vs the ground-truth images, as the DPS paper computes them.

DPS saves reconstructions and labels as PNGs and runs pytorch-fid on the two folders, so the
features here are those of the 8-bit images (`jaxdiff.data.to_uint8`, the PNGs' content) read as
u8 / 255. The reference side (the data folder's images at the model's size) is the same for every
method and task of a table, so its features are cached, keyed by content: the SHA-256 of every
image as the run decoded it (file bytes, crop and size all change it), the Inception weights'
digest and the preprocessing version. The cache lives in the user's cache folder
(`default_cache_dir`), never beside the weights, which may be read-only; a cache that cannot be
written costs a recomputation next time, never the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib

import numpy as np

from jaxdiff.metrics import fid as fidlib
from jaxdiff.metrics import inception

CACHE_VERSION = 2
# what happens between a decoded image and its features; part of the cache key
PREPROCESSING = "to_uint8(round, clip) / 255 -> torch-bilinear 299 -> pool3"
CACHE_ENV = "JAXDIFF_CACHE_DIR"
MISSING = "missing: no --config.metrics.inception=DIR (FID/KID not computed; not zero)"
log = logging.getLogger("jaxdiff.metrics")


def default_cache_dir() -> pathlib.Path:
    """Where jaxdiff caches derived data: $JAXDIFF_CACHE_DIR, else $XDG_CACHE_HOME/jaxdiff,
    else ~/.cache/jaxdiff."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "jaxdiff"


class InceptionScorer:
    """pool3 features of image batches with a converted FID Inception (loaded once)."""

    def __init__(self, directory, batch_size: int = 8):
        self.dir = pathlib.Path(directory).expanduser().absolute()
        self.params, self.meta = inception.load_inception(self.dir)
        # the converted parameters' digest (load_inception verified it), else the source file's
        self.sha256 = self.meta.get("params_sha256") or (self.meta.get("source") or {}).get(
            "sha256", ""
        )
        self.batch_size = int(batch_size)

    def features_u8(self, u8) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 2048) float32; fixed-size padded batches (one compile)."""
        u8 = np.asarray(u8)
        if u8.dtype != np.uint8 or u8.ndim != 4:
            raise ValueError(f"features_u8: expected uint8 (N, H, W, 3), got {u8.dtype} {u8.shape}")
        # batches padded to a power of two up to batch_size: few shapes, little padding
        out, b = [], min(self.batch_size, 1 << max(len(u8) - 1, 0).bit_length())
        for s in range(0, len(u8), b):
            chunk = u8[s : s + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, 0)])
            out.append(np.asarray(inception.features(self.params, inception.from_uint8(chunk)))[:n])
        return np.concatenate(out) if out else np.zeros((0, inception.DIMS), np.float32)

    def features(self, x) -> np.ndarray:
        """Images in [-1, 1] -> features of their 8-bit version (what the PNGs hold)."""
        from jaxdiff.data import to_uint8

        return self.features_u8(to_uint8(np.asarray(x, np.float32)))


def reference_key(images, size: int, inception_sha: str) -> str:
    """SHA-256 over what the reference features depend on: each decoded image's SHA-256 (in
    order), the size, the Inception weights' digest and the preprocessing version."""
    digests = [
        hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()
        for x in images.arrays
    ]
    blob = json.dumps([CACHE_VERSION, PREPROCESSING, int(size), inception_sha, digests])
    return hashlib.sha256(blob.encode()).hexdigest()


def reference_path(cache_dir, data: str, key: str, size: int, n: int) -> pathlib.Path:
    """The cache file of `key`; the data folder's name only makes it readable."""
    src = "demo" if data in ("", "demo") else str(pathlib.Path(data).expanduser().absolute())
    label = "demo" if src == "demo" else pathlib.Path(src).name or "data"
    return pathlib.Path(cache_dir) / f"{label}_{size}px_{n}img_{key[:24]}.npz"


def reference_features(scorer: InceptionScorer, data: str, images, size: int, cache_dir=None):
    """`(features, path, cached)` of the ground-truth images `images` (experiment.Images),
    cached under `cache_dir` (default: `default_cache_dir()/fid_reference`)."""
    cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir() / "fid_reference"
    key = reference_key(images, size, scorer.sha256)
    path = reference_path(cache_dir, data, key, size, len(images.names))
    try:
        ref = fidlib.load_reference(path)
    except (OSError, ValueError, KeyError) as e:  # unreadable or damaged: recompute
        log.warning("FID reference cache %s unreadable (%s); recomputing", path, e)
        ref = None
    if ref is not None and ref["info"].get("key") == key:
        return ref["features"], path, True
    feats = scorer.features(images.arrays)
    info = {"data": data, "image_size": size, "num_images": len(images.names), "key": key}
    info["inception"] = str(scorer.dir)
    try:
        fidlib.save_reference(path, feats, {**info, "names": list(images.names)})
    except OSError as e:
        log.warning(
            "FID reference cache not written (%s); set %s to a writable folder", e, CACHE_ENV
        )
    return feats, path, False


def set_metrics(recon, reference, sqrtm: str = "scipy", kid_subsets: int = 100,
                kid_subset_size: int = 1000) -> dict:  # fmt: skip
    """{"fid", "kid", "kid_std", "kid_subset_size", "n"} of reconstruction vs reference
    features; where they cannot be computed (fewer than 2 images, a failed square root) the
    values are None and "note" says why."""
    n = min(len(recon), len(reference))
    out = {"fid": None, "kid": None, "kid_std": None, "n": int(len(recon)), "fid_sqrtm": sqrtm}
    if n < 2:
        out["note"] = f"not computable: FID/KID need at least 2 images (this run has {n})"
        return out
    try:
        fid = fidlib.fid_from_features(recon, reference, sqrtm)
        kid, kid_std = fidlib.kid(recon, reference, kid_subsets, kid_subset_size)
    except (ValueError, np.linalg.LinAlgError) as e:
        out["note"] = f"not computable: {e}"
        return out
    out.update(fid=fid, kid=kid, kid_std=kid_std, kid_subset_size=min(int(kid_subset_size), n))
    return out


class FeatureStore:
    """workdir/inception_features.npz: the reconstructions' features by image name, kept like
    results.jsonl so a resumed run only computes the new ones (dropped if the weights differ)."""

    FILE = "inception_features.npz"

    def __init__(self, workdir, inception_sha: str):
        self.path = pathlib.Path(workdir) / self.FILE
        self.sha = inception_sha
        self.rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["sha256"]) == inception_sha:
                    self.rows = dict(zip(z["names"].tolist(), z["features"]))

    def add(self, names, feats) -> None:
        from jaxdiff.data import atomic_write_bytes

        self.rows.update(zip(names, np.asarray(feats, np.float32)))
        import io

        buf = io.BytesIO()
        names = sorted(self.rows)
        feats = np.stack([self.rows[k] for k in names])
        np.savez(buf, names=np.asarray(names), features=feats, sha256=np.asarray(self.sha))
        atomic_write_bytes(self.path, buf.getvalue())
