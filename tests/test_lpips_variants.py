"""LPIPS variants by name: aliases, the piq-style average-pool VGG, and the names in headers."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdiff.metrics.lpips import lpips, lpips_params, variant_name


def test_variant_names_and_aliases():
    assert variant_name("vgg") == variant_name("lpips-vgg") == "lpips-vgg"
    assert variant_name("alex") == "lpips-alex"
    assert variant_name("piq-lpips-avgpool") == "piq-lpips-avgpool"
    assert lpips_params("vgg") is lpips_params("piq-lpips-avgpool")  # the same shipped weights
    with pytest.raises(KeyError, match="piq-lpips-avgpool"):
        variant_name("squeeze")


def _piq_lpips_reference(x01, y01, params):
    """piq.LPIPS(replace_pooling=True) written from piq/perceptual.py's description: ImageNet
    mean/std on [0, 1], torchvision VGG16 features with AvgPool2d(2, 2), relu1_2 .. relu5_3
    unit-normalised, squared difference weighted by the v0.1 heads, spatial mean, sum."""
    import jax
    import jax.numpy as jnp

    mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
    vgg = params["VGG16_0"]

    def feats(x):
        x, out, conv = (x - mean) / std, [], 0
        for block in (2, 2, 3, 3, 3):
            if conv:
                x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
                x = x / 4
            for _ in range(block):
                w = vgg[f"Conv_{conv}"]
                x = jax.lax.conv_general_dilated(
                    x, w["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                x, conv = jax.nn.relu(x + w["bias"]), conv + 1
            out.append(x / (jnp.sqrt(jnp.sum(x**2, -1, keepdims=True)) + 1e-10))
        return out

    total = 0.0
    for i, (a, b) in enumerate(zip(feats(x01), feats(y01))):
        w = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0]
        total = total + jnp.mean(jnp.sum((a - b) ** 2 * w, -1), axis=(1, 2))
    return np.asarray(total)


@pytest.mark.slow
def test_piq_avgpool_variant_matches_a_second_derivation():
    import jax

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    got = np.asarray(lpips(x, y, "piq-lpips-avgpool"))
    with jax.default_matmul_precision("highest"):
        want = _piq_lpips_reference((x + 1) / 2, (y + 1) / 2, lpips_params("vgg"))
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert got[0] > 0
