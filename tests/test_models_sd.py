"""Stable Diffusion's UNet2DConditionModel, AutoencoderKL and VQModel against diffusers 0.42.1.

Fixtures (tests/fixtures/latent/): the shared tiny pipeline and VQ model with their reference
outputs (latent.npz, README rule: 1e-5 * max(1, max|ref|) on every network output, indices
exact), and held-out variants made by generators/make_latent_variants.py (an SD-2.x-style UNet:
linear projections, per-level heads, two transformer layers; a VAE without quant convs saved
with pre-0.14 attention names as a torch .bin).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdiff import latent_benchmark
from jaxdiff.convert import latent, torch_pickle
from jaxdiff.models import abstract_params, autoencoder, build_model, param_count, sd_unet
from tests.conftest import FIXTURES

REL = 1e-5


@pytest.fixture(scope="module")
def latent_dir():
    return FIXTURES / "latent"


@pytest.fixture(scope="module")
def ref(latent_dir):
    return dict(np.load(latent_dir / "latent.npz"))


@pytest.fixture(scope="module")
def variants(latent_dir):
    return dict(np.load(latent_dir / "latent_variants_io.npz"))


def apply(model, v, *args, method=None, **kw):
    """model.apply under one jit (one compile instead of one per primitive in eager mode)."""
    fn = jax.jit(lambda v, *a: model.apply(v, *a, method=method, **kw))
    return fn(v, *args)


def load(folder, arch):
    """(model, {"params": ...}) from a diffusers folder, through the converter's key map."""
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    weights = folder / "diffusion_pytorch_model.safetensors"
    if weights.is_file():
        sd = load_file(str(weights))
    else:
        sd = torch_pickle.load_state_dict(folder / "diffusion_pytorch_model.bin", progress=False)
    params = latent.state_dict_to_params(sd, arch, config, str(folder))
    return build_model(arch, config), {"params": params}


def nhwc(a):
    return np.moveaxis(np.asarray(a), 1, -1)


def assert_close(got, want_nchw, name):
    want = nhwc(want_nchw)
    err = float(np.abs(np.asarray(got) - want).max())
    tol = REL * max(1.0, float(np.abs(want).max()))
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


def test_sd_unet_matches_diffusers(latent_dir, ref):
    model, v = load(latent_dir / "sd_tiny" / "unet", "sd_unet")
    with jax.default_matmul_precision("highest"):
        out = apply(model, v, nhwc(ref["unet_zt"]), ref["unet_t"], ref["unet_context"])
    assert_close(out, ref["unet_out"], "unet_out")


@pytest.mark.slow  # ~15 s of compiling on 2 cores
def test_sd2_style_unet_matches_diffusers(latent_dir, variants):
    """Linear projections, heads (2, 4, 4) per level, 2 transformer layers, 3 levels."""
    model, v = load(latent_dir / "sd2_unet", "sd_unet")
    blocks = v["params"]["down_blocks_1"]["attentions_0"]
    assert set(blocks) >= {"transformer_blocks_0", "transformer_blocks_1"}
    assert blocks["proj_in"]["kernel"].shape == (32, 32)  # a Linear, not a 1x1 conv
    with jax.default_matmul_precision("highest"):
        z, t, context = nhwc(variants["unet_z"]), variants["unet_t"], variants["unet_context"]
        out = apply(model, v, z, t, context)
    assert_close(out, variants["unet_out"], "unet_out")


def test_vae_matches_diffusers(latent_dir, ref):
    model, v = load(latent_dir / "sd_tiny" / "vae", "autoencoder_kl")
    assert model.scaling_factor == 0.18215
    x = nhwc(ref["vae_x"])
    with jax.default_matmul_precision("highest"):
        mean, logvar = apply(model, v, x, method="encode")
        z = apply(model, v, x, method="encode_latents")
        decoded = apply(model, v, nhwc(ref["vae_z"]), method="decode_latents")
    assert_close(mean, ref["vae_mean"], "vae_mean")
    assert_close(logvar, ref["vae_logvar"], "vae_logvar")
    assert_close(z, ref["vae_z"], "vae_z")
    assert_close(decoded, ref["vae_decoded"], "vae_decoded")


@pytest.mark.slow  # ~15 s of compiling on 2 cores
def test_vae_without_quant_convs_and_legacy_keys_matches_diffusers(latent_dir, variants):
    model, v = load(latent_dir / "vae_legacy", "autoencoder_kl")
    assert "quant_conv" not in v["params"] and "post_quant_conv" not in v["params"]
    with jax.default_matmul_precision("highest"):
        mean, logvar = apply(model, v, nhwc(variants["vae_x"]), method="encode")
        decoded = apply(model, v, nhwc(variants["vae_latent"]), method="decode")
    assert_close(mean, variants["vae_mean"], "vae_mean")
    assert_close(logvar, variants["vae_logvar"], "vae_logvar")
    assert_close(decoded, variants["vae_decoded"], "vae_decoded")


def test_vq_matches_diffusers(latent_dir, ref):
    model, v = load(latent_dir / "vq_tiny", "vq_model")
    with jax.default_matmul_precision("highest"):
        h = apply(model, v, nhwc(ref["vae_x"]), method="encode")
        quant, indices = apply(model, v, nhwc(ref["vq_h"]), method="vector_quantize")
        decoded = apply(model, v, nhwc(ref["vq_h"]), method="decode")
    assert_close(h, ref["vq_h"], "vq_h")
    assert_close(quant, ref["vq_quant"], "vq_quant")
    np.testing.assert_array_equal(np.asarray(indices).reshape(2, -1), ref["vq_indices"])
    assert_close(decoded, ref["vq_decoded"], "vq_decoded")


TINY_KL = {
    "block_out_channels": [4, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": 2,
    "norm_num_groups": 2,
    "layers_per_block": 1,
}


def _directional(f, x, v, eps=1e-5):
    """(jax.grad(f)(x) . v, central finite difference of f along v), traceable."""
    return jnp.vdot(jax.grad(f)(x), v), (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


@pytest.mark.slow
def test_vae_gradients_match_finite_differences_in_float64():
    """jax.grad through the decoder and the encoder (fused GroupNorm, conv and upsampling VJPs)
    equals central finite differences along random directions, in float64."""
    rng = np.random.default_rng(0)

    def random(path, leaf):  # norm scales around 1, everything else around 0
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return mean + 0.2 * rng.standard_normal(leaf.shape)

    shapes = abstract_params("autoencoder_kl", TINY_KL)
    v = {"params": jax.tree_util.tree_map_with_path(random, shapes)}
    with jax.enable_x64(True):
        model = autoencoder.build_kl(TINY_KL, dtype=jnp.float64)
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
        keys = jax.random.split(jax.random.key(0), 6)
        x = jax.random.uniform(keys[0], (1, 8, 8, 3), jnp.float64, -1, 1)
        z = jax.random.normal(keys[3], (1, 4, 4, 2), jnp.float64)
        w_img = jax.random.normal(keys[4], (1, 8, 8, 3), jnp.float64)
        w_lat = jax.random.normal(keys[5], (1, 4, 4, 2), jnp.float64)

        def decoded(z):
            return jnp.sum(model.apply(v, z, method="decode_latents") * w_img)

        def encoded(x):
            mean, logvar = model.apply(v, x, method="encode")
            return jnp.sum(mean * w_lat) + jnp.sum(jnp.tanh(logvar) * w_lat)

        dz = jax.random.normal(jax.random.key(1), z.shape, jnp.float64)
        dx = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)

        @jax.jit  # one compile for both checks
        def both(z, x):
            return _directional(decoded, z, dz), _directional(encoded, x, dx)

        for name, (ad, fd) in zip(("decoder", "encoder"), both(z, x)):
            ad, fd = float(ad), float(fd)
            assert abs(ad - fd) <= 1e-7 * max(1.0, abs(fd)), (name, ad, fd)


@pytest.mark.slow  # ~15 s of compiling on 2 cores
def test_vq_decode_gradient_is_straight_through(latent_dir, ref):
    """decode() quantizes, yet its gradient is that of the decoder at the quantized latents (the
    reference's z + (z_q - z).detach()), not zero."""
    model, v = load(latent_dir / "vq_tiny", "vq_model")
    h = jnp.asarray(nhwc(ref["vq_h"]))
    quant, _ = apply(model, v, h, method="vector_quantize")

    def loss(z, force):
        return jnp.sum(model.apply(v, z, force_not_quantize=force, method="decode") ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    with jax.default_matmul_precision("highest"):
        g = grad(h, False)
        g_at_quant = grad(quant, True)
    assert float(jnp.abs(g).max()) > 0
    np.testing.assert_allclose(g, g_at_quant, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("down_block_types", ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"], "known"),
        ("attention_head_dim", 3, "must divide channels 32"),
        ("attention_head_dim", [8, 8, 8], "one entry per level"),
        ("addition_embed_type", "text_time", "addition_embed_type"),
        ("only_cross_attention", True, "only_cross_attention"),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type"),
        ("not_a_field", 1, "unknown field"),
    ],
)
def test_sd_unet_config_errors_name_the_field(latent_dir, field, value, match):
    config = json.loads((latent_dir / "sd_tiny" / "unet" / "config.json").read_text())
    config[field] = value
    with pytest.raises(ValueError, match=match):
        sd_unet.normalize_config(config)


def test_sd_unet_refuses_missing_or_mis_sized_context(latent_dir, ref):
    model, v = load(latent_dir / "sd_tiny" / "unet", "sd_unet")
    z = nhwc(ref["unet_zt"])
    with pytest.raises(ValueError, match="context must be"):
        model.apply(v, z, ref["unet_t"])
    with pytest.raises(ValueError, match="context must be"):
        model.apply(v, z, ref["unet_t"], np.zeros((2, 77, 16), np.float32))
    with pytest.raises(ValueError, match="not a multiple of 2"):
        model.apply(v, z[:, :7, :7], ref["unet_t"], ref["unet_context"])


def test_first_stage_config_errors_name_the_field():
    with pytest.raises(ValueError, match="_class_name='AutoencoderKL', not VQModel"):
        autoencoder.normalize_vq_config({"_class_name": "AutoencoderKL"})
    with pytest.raises(ValueError, match="norm_type='spatial'"):
        autoencoder.normalize_vq_config({"norm_type": "spatial"})
    with pytest.raises(ValueError, match="up_block_types"):
        autoencoder.normalize_kl_config({**TINY_KL, "up_block_types": ["UpDecoderBlock2D"]})


SD21_UNET = {  # stabilityai/stable-diffusion-2-1 unet/config.json, sizes only
    **latent_benchmark.SD15_UNET,
    "sample_size": 96,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "cross_attention_dim": 1024,
}


@pytest.mark.parametrize(
    "arch, config, count",
    [
        ("sd_unet", latent_benchmark.SD15_UNET, 859_520_964),  # diffusers' SD 1.5 UNet
        ("sd_unet", SD21_UNET, 865_910_724),  # SD 2.1 (linear projections, heads per level)
        ("autoencoder_kl", latent_benchmark.SD_VAE, 83_653_863),  # the SD VAE
    ],
)
def test_published_sizes_have_diffusers_parameter_counts(arch, config, count):
    """The full-size networks built from their configs hold exactly the published tensors'
    number of parameters (shapes only: nothing is computed)."""
    assert param_count(abstract_params(arch, config)) == count
