"""FID and KID of a run: reconstructions vs the ground-truth images, as the DPS paper computes them.

DPS saves reconstructions and labels as PNGs and runs pytorch-fid on the two folders, so the
features here are those of the 8-bit images (`jaxdiff.data.to_uint8`, the PNGs' content) read as
u8 / 255. The reference side (the data folder's images at the model's size) is the same for every
method and task of a table, so its features are cached once per (data folder, image list, size,
Inception weights) under `<inception dir>/reference_stats/` (or `metrics.reference_stats`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np

from jaxdiff.metrics import fid as fidlib
from jaxdiff.metrics import inception

CACHE_VERSION = 1
MISSING = "missing: no --config.metrics.inception=DIR (FID/KID not computed; not zero)"


class InceptionScorer:
    """pool3 features of image batches with a converted FID Inception (loaded once)."""

    def __init__(self, directory, batch_size: int = 8):
        self.dir = pathlib.Path(directory).expanduser().absolute()
        self.params, self.meta = inception.load_inception(self.dir)
        self.sha256 = (self.meta.get("source") or {}).get("sha256", "")
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


def reference_path(cache_dir, data: str, names, index, size: int, inception_sha: str):
    """One file per data folder, image list, size and Inception weights."""
    src = "demo" if data in ("", "demo") else str(pathlib.Path(data).expanduser().absolute())
    blob = json.dumps([CACHE_VERSION, src, list(names), list(map(int, index)), size, inception_sha])
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    label = "demo" if src == "demo" else pathlib.Path(src).name or "data"
    return pathlib.Path(cache_dir) / f"{label}_{size}px_{len(names)}img_{digest}.npz"


def reference_features(scorer: InceptionScorer, data: str, images, size: int, cache_dir=None):
    """`(features, path, cached)` of the ground-truth images `images` (experiment.Images)."""
    cache_dir = pathlib.Path(cache_dir) if cache_dir else scorer.dir / "reference_stats"
    path = reference_path(cache_dir, data, images.names, images.index, size, scorer.sha256)
    ref = fidlib.load_reference(path)
    if ref is not None:
        return ref["features"], path, True
    feats = scorer.features(images.arrays)
    info = {"data": data, "image_size": size, "num_images": len(images.names)}
    info["inception"] = str(scorer.dir)
    fidlib.save_reference(path, feats, {**info, "names": list(images.names)})
    return feats, path, False


def set_metrics(recon, reference, sqrtm: str = "scipy", kid_subsets: int = 100,
                kid_subset_size: int = 1000) -> dict:  # fmt: skip
    """{"fid", "kid", "kid_std", "kid_subset_size", "n"} of reconstruction vs reference
    features (None where fewer than 2 images)."""
    n = min(len(recon), len(reference))
    out = {"fid": None, "kid": None, "kid_std": None, "n": int(len(recon)), "fid_sqrtm": sqrtm}
    if n < 2:
        out["note"] = "FID/KID need at least 2 images"
        return out
    out["fid"] = fidlib.fid_from_features(recon, reference, sqrtm)
    out["kid"], out["kid_std"] = fidlib.kid(recon, reference, kid_subsets, kid_subset_size)
    out["kid_subset_size"] = min(int(kid_subset_size), n)
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
