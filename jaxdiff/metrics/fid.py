"""FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) from Inception pool3 features.

FID is pytorch-fid's `calculate_frechet_distance` (src/pytorch_fid/fid_score.py): float64 mean
and `np.cov` (ddof=1) of float32 features promoted to float64, `scipy.linalg.sqrtm` of the
product sigma1 @ sigma2 (not of each factor), the 1e-6 diagonal offset when that square root is
not finite, the imaginary-part check on its diagonal. KID is torch-fidelity's
`kid_features_to_metric` (metric_kid.py): the unbiased MMD^2 with the cubic polynomial kernel
(x.y / d + 1)^3 over `subsets` random subsets drawn by `np.random.RandomState(seed)`.

Host-side numpy on purpose: these are a few matrix operations per run, and float64 must not
depend on JAX's x64 flag.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings

import numpy as np

KID_SUBSETS = 100  # torch-fidelity defaults
KID_SUBSET_SIZE = 1000
KID_SEED = 1234


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` in float64 as pytorch-fid's calculate_activation_statistics."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID statistics need (N >= 2, D) features, got shape {f.shape}")
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    import scipy.linalg

    with warnings.catch_warnings():  # "Matrix is singular": expected for N < D samples
        warnings.simplefilter("ignore")
        out = scipy.linalg.sqrtm(a)
    return np.atleast_2d(out[0] if isinstance(out, tuple) else out)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2)), as pytorch-fid.

    Also takes 0-d / 1-d inputs (a single feature), where pytorch-fid's own call fails."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    s1, s2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(
            f"FID: mean/covariance shapes differ: {mu1.shape} {s1.shape} vs {mu2.shape} {s2.shape}"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: imaginary component {m} in sqrtm(sigma1 @ sigma2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def trace_sqrt_product_svd(f1, f2) -> float:
    """tr sqrtm(sigma1 @ sigma2) from the features themselves: with A, B the centred features
    over sqrt(N - 1), sigma1 = A^T A, sigma2 = B^T B and the nonzero eigenvalues of
    sigma1 sigma2 are the squared singular values of A B^T, so the trace is its nuclear norm.
    Exact (the eigenvalue formula, no complex Schur form), and an (N1 x N2) problem instead of
    (D x D): on the fixture sets it differs from scipy's sqrtm by 3e-6."""
    a = np.asarray(f1, np.float64)
    b = np.asarray(f2, np.float64)
    a = (a - a.mean(0)) / np.sqrt(a.shape[0] - 1)
    b = (b - b.mean(0)) / np.sqrt(b.shape[0] - 1)
    return float(np.sum(np.linalg.svd(a @ b.T, compute_uv=False)))


SQRTM_METHODS = ("scipy", "svd")


def fid_from_features(f1, f2, sqrtm: str = "scipy") -> float:
    """FID of two feature sets. sqrtm="scipy": pytorch-fid's computation exactly (a D x D
    scipy.linalg.sqrtm, ~45 s for D = 2048 on 2 CPU cores); "svd": the same quantity from
    `trace_sqrt_product_svd` (seconds; equal up to float rounding)."""
    if sqrtm not in SQRTM_METHODS:
        raise ValueError(f"FID sqrtm method {sqrtm!r}; known: {SQRTM_METHODS}")
    mu1, s1 = feature_stats(f1)
    mu2, s2 = feature_stats(f2)
    if sqrtm == "scipy":
        return frechet_distance(mu1, s1, mu2, s2)
    diff = mu1 - mu2
    tr = trace_sqrt_product_svd(f1, f2)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr)


def _mmd2_poly(f1, f2, degree: int, gamma: float, coef0: float) -> float:
    k11 = (f1 @ f1.T * gamma + coef0) ** degree
    k22 = (f2 @ f2.T * gamma + coef0) ** degree
    k12 = (f1 @ f2.T * gamma + coef0) ** degree
    m = f1.shape[0]
    xx = k11.sum() - np.trace(k11)
    yy = k22.sum() - np.trace(k22)
    return float((xx + yy) / (m * (m - 1)) - 2 * k12.sum() / (m * m))


def kid(
    f1,
    f2,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """`(mean, std)` of the unbiased polynomial-kernel MMD^2 over random subsets, as
    torch-fidelity. `subset_size` is capped at the smaller set (torch-fidelity refuses instead),
    so a handful of images still gives a number; summaries record the size used."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID: features of shapes {f1.shape} and {f2.shape}")
    m = min(int(subset_size), f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {f1.shape[0]}, {f2.shape[0]}")
    gamma = 1.0 / f1.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        a = f1[rng.choice(f1.shape[0], m, replace=False)]
        b = f2[rng.choice(f2.shape[0], m, replace=False)]
        vals[i] = _mmd2_poly(a, b, degree, gamma, coef0)
    return float(np.mean(vals)), float(np.std(vals))


# --- reference statistics, computed once per data folder -----------------------------------------
def save_reference(path, features, info: dict) -> pathlib.Path:
    """features (float32 values), their float64 mu/sigma (empty below 2 images) and `info`
    (what they were computed from), written atomically so concurrent runs never read half a
    file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = np.asarray(features)
    if len(features) >= 2:
        mu, sigma = feature_stats(features)
    else:  # one image: its features are still worth keeping; it has no covariance
        mu, sigma = np.zeros((0,)), np.zeros((0, 0))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, features=features, mu=mu, sigma=sigma, info=json.dumps(info))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_reference(path) -> dict | None:
    """{"features", "mu", "sigma", "info"} or None when the file is absent."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {
            "features": z["features"],
            "mu": z["mu"],
            "sigma": z["sigma"],
            "info": json.loads(str(z["info"])),
        }
