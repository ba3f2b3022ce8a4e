"""Replay of the FID fixture (`fid*.npz`): pytorch-fid's InceptionV3, FID and KID.

Preprocessing (`probe{i}_x_in`), the probe-0 block outputs, pool3 features of every probe and of
both FID sets, FID from jaxdiff's own features (scipy sqrtm, as pytorch-fid) and from the stored
features (the fast "svd" trace), the synthetic closed-form Gaussians, and torch-fidelity's KID.
Tolerances are the fixture README's: float32 x_in 6e-5, blocks 1e-4 relative to their max,
pool3 2e-5, FID 1e-3, closed forms 1e-6 (float64: pool3 against the float64 replay, 1e-9).
The network is `--model DIR` (converted), else the fixture's .pth beside the npz, converted in
memory.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxdiff.metrics import fid as fidlib
from jaxdiff.metrics import inception
from jaxdiff.parity.common import compare, nchw_to_nhwc, report, sidecar

WEIGHTS = "fid_inception_random.pth"
BLOCKS = {
    "block0_maxpool1": "probe0_block0_maxpool1",
    "block1_maxpool2": "probe0_block1_maxpool2",
    "mixed_5d": "probe0_mixed_5d",
    "mixed_6e": "probe0_mixed_6e",
    "mixed_7c": "probe0_mixed_7c",
}


def _params(npz_path: pathlib.Path, model_dir):
    if model_dir is not None:
        return inception.load_inception(model_dir)[0]
    pth = npz_path.with_name(WEIGHTS)
    if not pth.is_file():
        raise FileNotFoundError(f"{npz_path}: pass --model DIR (no {WEIGHTS} beside the fixture)")
    from jaxdiff.convert import fid_inception, torch_pickle

    sd = torch_pickle.load_state_dict(pth, progress=False)
    return fid_inception.state_dict_to_params(sd, str(pth))


def _rel(got, want, rtol) -> dict:
    return compare(got, want, rtol * float(np.max(np.abs(want))))


def synthetic_cases(z) -> list[tuple]:
    """The fixture's four closed-form FID cases: commuting, diag2d, general, identical."""
    return [
        (z["syn_mu1"], z["syn_sigma1"], z["syn_mu2"], z["syn_sigma2_commuting"]),
        ((0.0, 0.0), np.diag([1.0, 9.0]), (1.0, 0.0), np.diag([4.0, 1.0])),
        (z["syn_mu1"], z["syn_sigma1"], z["syn_mu2"], z["syn_sigma2_general"]),
        (z["syn_mu1"], z["syn_sigma1"], z["syn_mu1"], z["syn_sigma1"]),
    ]


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    z = dict(np.load(npz_path))
    cfg = sidecar(npz_path)["config"]
    f64 = dtype == "float64"
    if f64:
        jax.config.update("jax_enable_x64", True)
    params = _params(npz_path, model_dir)
    if f64:
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    ft = np.float64 if f64 else np.float32

    def feats(u8, output="pool3"):
        x = inception.from_uint8(u8, ft)
        return np.asarray(inception.features(params, x, output, dtype=dtype))

    arrays = {}
    for i in cfg["x299_for"]:
        got = inception.preprocess(inception.from_uint8(z[f"probe{i}_u8"][None], ft))
        arrays[f"probe{i}_x_in"] = compare(got, nchw_to_nhwc(z[f"probe{i}_x_in"]), 6e-5)
    for output, name in BLOCKS.items():
        arrays[name] = _rel(feats(z["probe0_u8"][None], output), nchw_to_nhwc(z[name]), 1e-4)
    n = len(cfg["probes"])
    sizes = [z[f"probe{i}_u8"].shape[0] for i in range(n)]
    groups = {s: [i for i in range(n) if sizes[i] == s] for s in dict.fromkeys(sizes)}
    pool = np.zeros((n, inception.DIMS))
    for idx in groups.values():  # one batch per image size, as the fixture's official run
        pool[idx] = feats(np.stack([z[f"probe{i}_u8"] for i in idx]))
    suffix, tol = ("_f64", 1e-9) if f64 else ("", 2e-5)
    arrays["probe_pool3"] = compare(pool, z["probe_pool3" + suffix], tol)
    sets = {s: feats(z[f"set{s}_u8"]) for s in "AB"}
    for s in "AB":
        arrays[f"set{s}_pool3"] = compare(sets[s], z[f"set{s}_pool3" + suffix], tol)
    want = float(z["fid"])
    arrays["fid"] = compare(fidlib.fid_from_features(sets["A"], sets["B"], "scipy"), want, 1e-3)
    stored = fidlib.fid_from_features(z["setA_pool3"], z["setB_pool3"], "svd")
    arrays["fid_stored_features_svd"] = compare(stored, want, 1e-3)
    syn = [fidlib.frechet_distance(*c) for c in synthetic_cases(z)]
    arrays["syn_fid"] = compare(syn, z["syn_fid_reference"], 1e-6)
    k = cfg["kid"]
    kid, _ = fidlib.kid(
        z["setA_pool3"],
        z["setB_pool3"],
        subsets=k["kid_subsets"],
        subset_size=k["kid_subset_size"],
        degree=k["kid_kernel_poly_degree"],
        coef0=k["kid_kernel_poly_coef0"],
        seed=k["rng_seed"],
    )
    arrays["kid_mean"] = compare(kid, z["kid_mean"], 1e-6)
    return report(npz_path, "fid", arrays, dtype=dtype)
