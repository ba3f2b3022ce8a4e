"""Replay of the FID fixture (`fid*.npz`): pytorch-fid's InceptionV3, FID and KID.

Preprocessing (`probe{i}_x_in` for every probe stored), the block outputs of the probe the
fixture stores them for (`probe{i}_<block>`: the names in the file, which the sidecar's
`intermediates_for` says), pool3 features of every probe and of both FID sets, FID from
jaxdiff's own features and from the stored features (scipy sqrtm, as pytorch-fid), the
synthetic closed-form Gaussians, and torch-fidelity's KID.
Rules (fixture README section 7): x_in 6e-5; blocks 1e-5 relative to their max; pool3 2e-5
(float64: against the float64 replay, 1e-9); FID from the stored features 4e-6 relative, from
jaxdiff's float32 features 1e-5 relative; synthetic cases 1e-9; KID 1e-6 relative.
The network is `--model DIR` (converted), else the fixture's .pth beside the npz, converted in
memory.
"""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np

from jaxdiff.metrics import fid as fidlib
from jaxdiff.metrics import inception
from jaxdiff.parity.common import Fixture

WEIGHTS = "fid_inception_random.pth"
BLOCKS = ("block0_maxpool1", "block1_maxpool2", "mixed_5d", "mixed_6e", "mixed_7c")


def _params(npz_path: pathlib.Path, model_dir):
    if model_dir is not None:
        return inception.load_inception(model_dir)[0]
    pth = npz_path.with_name(WEIGHTS)
    if not pth.is_file():
        raise FileNotFoundError(f"{npz_path}: pass --model DIR (no {WEIGHTS} beside the fixture)")
    from jaxdiff.convert import fid_inception, torch_pickle

    sd = torch_pickle.load_state_dict(pth, progress=False)
    return fid_inception.state_dict_to_params(sd, str(pth))


def synthetic_cases(z) -> list[tuple]:
    """The fixture's four closed-form FID cases: commuting, diag2d, general, identical."""
    return [
        (z["syn_mu1"], z["syn_sigma1"], z["syn_mu2"], z["syn_sigma2_commuting"]),
        ((0.0, 0.0), np.diag([1.0, 9.0]), (1.0, 0.0), np.diag([4.0, 1.0])),
        (z["syn_mu1"], z["syn_sigma1"], z["syn_mu2"], z["syn_sigma2_general"]),
        (z["syn_mu1"], z["syn_sigma1"], z["syn_mu1"], z["syn_sigma1"]),
    ]


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, None, dtype, trajectory=("probe_pool3", "setA_pool3"))
    z, cfg = fx.arrays, fx.config["config"]
    f64 = dtype == "float64"
    if f64:
        jax.config.update("jax_enable_x64", True)
    params = _params(fx.path, model_dir)
    if f64:
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    ft = np.float64 if f64 else np.float32

    def feats(u8, output="pool3"):
        x = inception.from_uint8(u8, ft)
        return np.asarray(inception.features(params, x, output, dtype=dtype))

    n = len(cfg["probes"])
    for i in range(n):
        if f"probe{i}_x_in" in z:
            got = inception.preprocess(inception.from_uint8(fx[f"probe{i}_u8"][None], ft))
            fx.check(f"probe{i}_x_in", got, 6e-5, nhwc=True)
    blocks = [(m.group(0), int(m.group(1)), m.group(2)) for m in
              (re.fullmatch(rf"probe(\d+)_({'|'.join(BLOCKS)})", k) for k in z) if m]  # fmt: skip
    if "intermediates_for" in cfg and any(i != int(cfg["intermediates_for"]) for _, i, _ in blocks):
        raise ValueError(f"{fx.path}: block outputs of a probe other than intermediates_for")
    for name, i, output in blocks:
        fx.check(name, feats(z[f"probe{i}_u8"][None], output), 0.0, 1e-5, nhwc=True)
    sizes = [z[f"probe{i}_u8"].shape[0] for i in range(n)]
    groups = {s: [i for i in range(n) if sizes[i] == s] for s in dict.fromkeys(sizes)}
    pool = np.zeros((n, inception.DIMS))
    for idx in groups.values():  # one batch per image size, as the fixture's official run
        pool[idx] = feats(np.stack([fx[f"probe{i}_u8"] for i in idx]))
    suffix, tol = ("_f64", 1e-9) if f64 else ("", 2e-5)
    fx.check("probe_pool3" + suffix, pool, tol)
    sets = {s: feats(fx[f"set{s}_u8"]) for s in "AB"}
    for s in "AB":
        fx.check(f"set{s}_pool3" + suffix, sets[s], tol)
    fid = fidlib.fid_from_features(sets["A"], sets["B"], "scipy")
    fx.check("fid", fid, 0.0, 1e-5, key="fid_own_features")
    # scipy's sqrtm, as the official code: at small n the D x D sqrtm sums round-off eigenvalues
    # that an exact trace does not (fid_probe1 README: 7.7e-6 relative at n = 6)
    stored = fidlib.fid_from_features(z["setA_pool3"], z["setB_pool3"], "scipy")
    fx.check("fid", stored, 0.0, 4e-6, key="fid_stored_features")
    syn = [fidlib.frechet_distance(*c) for c in synthetic_cases(fx)]
    fx.check("syn_fid_reference", syn, 1e-9)
    fx.skip("syn_fid", "the synthetic cases by pytorch-fid's own code (syn_fid_reference is exact)")
    k = cfg["kid"]
    kid, _ = fidlib.kid(
        z["setA_pool3"], z["setB_pool3"], subsets=k["kid_subsets"],
        subset_size=k["kid_subset_size"], degree=k["kid_kernel_poly_degree"],
        coef0=k["kid_kernel_poly_coef0"], seed=k["rng_seed"],
    )  # fmt: skip
    fx.check("kid_mean", kid, 0.0, 1e-6)
    for name in z:
        if name.endswith("_f64"):
            fx.skip(name, "the float64 network's features (compared by a --float64 replay)")
        elif name.endswith("_x_resized"):
            fx.skip(name, "the resize before normalisation (x_in, after both, is compared)")
        elif re.fullmatch(r"set[AB]_(mu|sigma_\w+)|syn_\w+", name):
            fx.skip(
                name, "an intermediate of pytorch-fid's own statistics (its result is compared)"
            )
    return fx.report("fid")
