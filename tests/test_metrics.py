"""Metrics: parity with scikit-image and torch lpips on the recorded PNG pairs, plus properties."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff.metrics import lpips, lpips_params, psnr, ssim
from jaxdiff.metrics.per_image import compute_metrics


def _load(path):
    """Official conversion (lpips.im2tensor / DPS loader): u8 / 127.5 - 1, float32, HWC."""
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def pairs(request):
    fx = request.config.rootpath / "tests" / "fixtures"
    meta = json.loads((fx / "metrics.json").read_text())
    ref = np.stack([_load(fx / p["ref"]) for p in meta["pairs"]])
    deg = np.stack([_load(fx / p["degraded"]) for p in meta["pairs"]])
    return ref, deg, dict(np.load(fx / "metrics.npz")), meta


@pytest.mark.parametrize(
    "name, fn, atol",
    [
        ("psnr", psnr, 1e-5),  # float32 output: 1 ulp at 20-26 dB is 1.9e-6
        ("ssim_gauss", ssim, 1e-6),
        ("ssim_default", lambda a, b: ssim(a, b, gaussian=False), 1e-6),
    ],
)
def test_psnr_ssim_match_scikit_image(pairs, name, fn, atol):
    ref, deg, want, _ = pairs
    got = np.asarray(jax.jit(fn)(ref, deg))
    assert got.shape == (len(ref),)
    np.testing.assert_allclose(got, want[name], rtol=0, atol=atol)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_matches_torch_lpips(pairs, net):
    ref, deg, want, _ = pairs
    params = lpips_params(net)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda p, a, b: lpips(a, b, net, params=p))(params, ref, deg)
    np.testing.assert_allclose(np.asarray(got), want[f"lpips_{net}"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("options", [{"xla_cpu_experimental_ynn_fusion_type": ""}])
def test_compute_metrics_matches_the_references_with_the_commands_compiler_options(pairs, options):
    """With the commands' options (the default program's metrics: the per-metric tests above)."""
    if options and jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU option")
    ref, deg, want, _ = pairs
    with jax.default_matmul_precision("highest"):
        got = compute_metrics(deg, ref, net="vgg", compiler_options=options)
    # PSNR: XLA's emitters sum the squared error in another order than the default program;
    # a float32 mean over n terms rounds to ~sqrt(n) eps relative, 10 / ln 10 times that in dB
    n = ref[0].size
    psnr_atol = 10 / np.log(10) * np.sqrt(n) * np.finfo(np.float32).eps
    np.testing.assert_allclose(got["psnr"], want["psnr"], rtol=0, atol=psnr_atol)
    np.testing.assert_allclose(got["ssim"], want["ssim_gauss"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["lpips"], want["lpips_vgg"], rtol=0, atol=1e-5)


def test_lpips_range_is_minus_one_to_one(pairs):
    """Feeding [0, 1] data (the tempting mistake) moves the value far outside the tolerance."""
    ref, deg, want, _ = pairs
    got = np.asarray(lpips(ref[1:2] * 0.5 + 0.5, deg[1:2] * 0.5 + 0.5, "alex"))
    assert abs(got[0] - want["lpips_alex"][1]) > 0.02


def test_lpips_repository_example_spatial(request):
    fx = request.config.rootpath / "tests" / "fixtures"
    meta = json.loads((fx / "metrics.json").read_text())["lpips_repo_example_spatial_mean"]
    ex_ref, p0, p1 = (_load(fx / f"lpips_ex_{n}.png")[None] for n in ("ref", "p0", "p1"))
    for net in ("alex", "vgg"):
        maps = lpips(np.concatenate([ex_ref, ex_ref]), np.concatenate([p0, p1]), net, spatial=True)
        assert maps.shape == (2, 64, 64)
        np.testing.assert_allclose(np.asarray(maps.mean(axis=(1, 2))), meta[net], atol=1e-5)


def test_identical_images():
    x = jax.random.uniform(jax.random.key(0), (3, 24, 24, 3), minval=-1, maxval=1)
    assert np.all(np.isinf(np.asarray(psnr(x, x))))
    np.testing.assert_allclose(np.asarray(ssim(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssim(x, x, gaussian=False)), 1.0, atol=1e-6)


def test_psnr_closed_form_and_per_image():
    """A constant offset d on [-1, 1] is d/2 on [0, 1]: PSNR = -20 log10(d / 2), per image."""
    x = jnp.zeros((2, 8, 8, 3))
    y = x + jnp.array([0.2, 0.02])[:, None, None, None]
    np.testing.assert_allclose(np.asarray(psnr(x, y)), [20.0, 40.0], rtol=1e-6)


def test_ssim_is_per_image():
    key1, key2 = jax.random.split(jax.random.key(1))
    x = jax.random.uniform(key1, (3, 24, 24, 3), minval=-1, maxval=1)
    y = jnp.clip(x + 0.3 * jax.random.normal(key2, x.shape), -1, 1)
    y = y.at[1].set(x[1])  # image 1 identical: 1.0 whatever its neighbours are
    batch = np.asarray(ssim(x, y))
    np.testing.assert_allclose(np.asarray(ssim(x[::-1], y[::-1]))[::-1], batch, rtol=1e-6)
    np.testing.assert_allclose(batch[1], 1.0, atol=1e-6)
    assert np.all(batch[[0, 2]] < 0.9)


@pytest.mark.parametrize(
    "fn, a, b, match",
    [
        (psnr, (4, 4, 3), (4, 4, 3), "NHWC"),
        (ssim, (1, 8, 8, 3), (1, 8, 8, 3), "window"),
        (ssim, (1, 16, 16, 3), (1, 16, 15, 3), "same shape"),
        (lpips, (1, 64, 64, 1), (1, 64, 64, 1), "RGB"),
    ],
)
def test_bad_shapes_raise(fn, a, b, match):
    with pytest.raises(ValueError, match=match):
        fn(jnp.zeros(a), jnp.zeros(b))


def test_unknown_lpips_net():
    with pytest.raises(KeyError, match="squeeze"):
        lpips(jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3)), "squeeze")
