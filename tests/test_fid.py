"""FID / KID: the Flax FID InceptionV3 against pytorch-fid's own outputs (fixture subset
fid_small.npz, see tests/fixtures/make_fid_small.py), FID and KID against pytorch-fid /
torch-fidelity and closed forms, the converter's recognition and refusals."""

from __future__ import annotations

import collections
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert_weights.cli import main
from jaxdiff.convert import fid_inception
from jaxdiff.convert.core import convert
from jaxdiff.errors import KeyMismatchError, NotFIDInceptionError
from jaxdiff.metrics import fid as F
from jaxdiff.metrics import inception as inc
from jaxdiff.parity.fid import synthetic_cases
from tests.test_torch_pickle import tensor, write_legacy

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def z():
    return dict(np.load(FIXTURES / "fid_small.npz"))


def nhwc(a):
    return np.moveaxis(a, 1, -1)


def random_state_dict(seed=0, num_batches_tracked=True) -> dict:
    """A random FID Inception state dict in the real file's key order and shapes (+ fc)."""
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()
    for k, shape in fid_inception.expected_shapes().items():
        if k.endswith("conv.weight"):
            sd[k] = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape).astype(np.float32)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            base = 1.0 if k.endswith("bn.weight") else 0.0
            sd[k] = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if k.endswith("running_var") and num_batches_tracked:
            sd[k.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    sd["fc.weight"] = np.zeros(fid_inception.FC_SHAPE, np.float32)
    sd["fc.bias"] = np.zeros(fid_inception.FC_SHAPE[:1], np.float32)
    return sd


def write_pth(path, sd):
    return write_legacy(path, collections.OrderedDict((k, tensor(k, v)) for k, v in sd.items()))


def test_preprocessing_matches_pytorch_fid(z):
    """torch bilinear (align_corners=False, no antialias) to 299, then 2x - 1: 32 px upsampled
    and 384 px downsampled (where jax.image.resize would antialias)."""
    for i in (0, 5):
        got = np.asarray(inc.preprocess(inc.from_uint8(z[f"probe{i}_u8"][None])))
        np.testing.assert_allclose(got[:, ::3, ::3], nhwc(z[f"probe{i}_x_in_s3"]), atol=6e-5)
    x = np.random.default_rng(0).uniform(0, 1, (1, 299, 299, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(inc.resize_bilinear(x)), x)  # exact identity


def test_blocks_match_pytorch_fid(z):
    """Conv/BN/ReLU, VALID stride-2 layers, max pools and FIDInceptionA (average pool without
    the padding) up to Mixed_5d, with the fixture network's own first-block weights."""
    sd = {k[2:]: v for k, v in z.items() if k.startswith("w:")}
    params = fid_inception.state_dict_to_params(sd, strict=False)
    x = inc.from_uint8(z["probe0_u8"][None])
    with jax.default_matmul_precision("highest"):
        for out in ("block0_maxpool1", "block1_maxpool2", "mixed_5d"):
            want = nhwc(z[f"probe0_{out}_s3"])
            got = np.asarray(inc.features(params, x, out))[:, ::3, ::3]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)


def test_pools_exclude_padding_and_pad_max_with_minus_inf():
    import flax.linen as nn

    x = -jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # all negative: zero padding would win a max
    avg = np.asarray(inc._avg3(x))[0, :, :, 0]
    assert avg[0, 0] == pytest.approx(-(1 + 2 + 4 + 5) / 4)  # corner: 4 real pixels, not 9
    assert avg[0, 1] == pytest.approx(-(1 + 2 + 3 + 4 + 5 + 6) / 6)
    assert avg[1, 1] == pytest.approx(-5.0)
    mx = np.asarray(nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))))  # Mixed_7c's pool
    assert mx[0, 0, 0, 0] == -1.0 and mx[0, 2, 2, 0] == -5.0


def test_fid_and_kid_match_pytorch_fid_and_torch_fidelity(z):
    a, b = z["setA_pool3"], z["setB_pool3"]
    mu, sigma = F.feature_stats(a)
    np.testing.assert_array_equal(mu, z["setA_mu"])  # float64, np.mean / np.cov(ddof=1)
    np.testing.assert_array_equal(np.diagonal(sigma), z["setA_sigma_diag"])
    np.testing.assert_array_equal(sigma[:64, :64], z["setA_sigma_block"])
    assert F.fid_from_features(a, b, "svd") == pytest.approx(float(z["fid"]), abs=1e-3)
    assert F.fid_from_features(a, a, "svd") == pytest.approx(0.0, abs=1e-9)
    mean, std = F.kid(a, b, subsets=2, subset_size=10, seed=1234)
    assert mean == pytest.approx(float(z["kid_mean"]), abs=1e-9) and std < 1e-9


def test_fid_closed_forms_and_svd_equals_scipy(z):
    got = [F.frechet_distance(*c) for c in synthetic_cases(z)]
    np.testing.assert_allclose(got, z["syn_fid_reference"], atol=1e-6, rtol=0)
    assert F.frechet_distance(0.0, 1.0, 1.0, 4.0) == pytest.approx(2.0)  # 1 + (1 - 2)^2
    rng = np.random.default_rng(1)
    for n1, n2 in ((10, 12), (80, 90)):  # rank-deficient and full-rank covariances (D = 32)
        f1, f2 = rng.normal(size=(n1, 32)), 1.3 * rng.normal(size=(n2, 32)) + 0.2
        want = F.fid_from_features(f1, f2, "scipy")
        assert F.fid_from_features(f1, f2, "svd") == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sqrtm method"):
        F.fid_from_features(f1, f2, "newton")


def test_converter_refuses_what_is_not_the_fid_inception(tmp_path):
    """(The round trip of a full random FID Inception file: tests/test_fid_driver.py.)"""
    sd = {k: np.zeros(v, np.float32) for k, v in fid_inception.expected_shapes().items()}
    sd["fc.weight"] = np.zeros(fid_inception.FC_SHAPE, np.float32)
    fid_inception.check(sd, "zeros.pth")  # the FID key set and shapes pass
    # torchvision's ImageNet Inception3 has the same block keys: refused by name
    tv = {
        **sd,
        "fc.weight": np.zeros((1000, 2048), np.float32),
        "AuxLogits.fc.bias": np.zeros(1000),
    }
    with pytest.raises(NotFIDInceptionError, match="not the FID one"):
        fid_inception.check(tv, "inception_v3_google.pth")
    broken = dict(sd)
    del broken["Mixed_5b.branch1x1.bn.running_mean"]
    broken["Mixed_6a.branch3x3.conv.weight"] = np.zeros((384, 288, 1, 1), np.float32)
    with pytest.raises(KeyMismatchError, match="Mixed_5b.branch1x1.bn.running_mean") as e:
        fid_inception.check(broken, "x.pth")
    assert "Mixed_6a.branch3x3.conv.weight" in str(e.value)
    # a diffusion checkpoint given as the Inception: the named error, from the CLI too
    with pytest.raises(NotFIDInceptionError, match="adm_tiny.pt: not pytorch-fid's FID Incep"):
        convert(FIXTURES / "adm_tiny.pt", tmp_path / "x", kind="fid_inception", progress=False)
    assert main([str(FIXTURES / "adm_tiny.pt"), "--out", str(tmp_path / "y"),
                 "--kind", "fid_inception", "--quiet"]) == 2  # fmt: skip
    assert not (tmp_path / "y").exists()
    # a converted diffusion model given to the metrics: named too
    with pytest.raises(NotFIDInceptionError, match="not the FID Inception"):
        inc.load_inception(pathlib.Path(__file__).parents[1] / "jaxdiff/assets/demo_prior")
    with pytest.raises(FileNotFoundError, match="convert_weights"):
        inc.load_inception(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("JAXDIFF_FID_FIXTURE"),
    reason="set JAXDIFF_FID_FIXTURE=.../fid.npz (with fid_inception_random.pth beside it)",
)
def test_full_network_parity_replay():
    """The whole fixture (every probe, both FID sets, FID with scipy's sqrtm): needs the 95 MB
    network, which is not copied into tests/fixtures."""
    from jaxdiff.parity.fid import replay

    with jax.default_matmul_precision("highest"):
        r = replay(os.environ["JAXDIFF_FID_FIXTURE"])
    assert r["pass"], json.dumps(r["arrays"], indent=1)
