"""ADM UNet: parity with guided-diffusion on the fixture checkpoints, key maps, config space."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.convert import adm as adm_keys
from jaxdiff.convert.torch_pickle import load_state_dict
from jaxdiff.errors import CheckpointError, KeyMismatchError
from jaxdiff.models import abstract_params, build_model, param_count
from jaxdiff.models.adm import AttentionBlock
from tests.conftest import FIXTURES
from tests.torch_layouts import adm_state_dict_shapes

NAMES = ["adm_tiny", "adm_tiny_legacy"]
# Each forward compiles a UNet (~6 s of CPU): the second fixture's float64/bfloat16 runs are slow.
NAMES_SLOW_AFTER_FIRST = [
    "adm_tiny",
    pytest.param("adm_tiny_legacy", marks=pytest.mark.slow),
]
# bfloat16 compute vs the float32 torch output, measured on both fixtures: max |err| / max |out|
# 0.038 / 0.037, RMS err / RMS out 0.029 / 0.022 (weights ~N(0, 0.05^2), 20+ layers deep).
BF16_MAX_REL, BF16_RMS_REL = 0.1, 0.06


@functools.cache
def fixture(name):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    sd = load_state_dict(FIXTURES / f"{name}.pt", progress=False)
    io = dict(np.load(FIXTURES / f"{name}_io.npz"))
    io["x"] = io["x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    for k in ("out", "out_f64"):
        io[k] = io[k].transpose(0, 2, 3, 1)
    return meta["kwargs"], sd, adm_keys.state_dict_to_params(sd, meta["kwargs"]), io


@functools.cache
def forward(name, dtype=jnp.float32):
    cfg = fixture(name)[0]
    return jax.jit(build_model("adm", cfg, dtype=dtype).apply)


@pytest.mark.parametrize("name", NAMES)
def test_float32_parity(name):
    cfg, sd, params, io = fixture(name)
    assert (
        param_count(params) == json.loads((FIXTURES / f"{name}.json").read_text())["num_parameters"]
    )
    with jax.default_matmul_precision("highest"):
        out = np.asarray(forward(name)({"params": params}, io["x"], io["t"]))
    assert out.dtype == np.float32 and out.shape == io["out"].shape
    err = np.abs(out - io["out"]).max()
    assert err <= 1e-5 * np.abs(io["out"]).max(), err  # measured 8.9e-6 / 4.5e-6 (abs)


@pytest.mark.parametrize("name", NAMES_SLOW_AFTER_FIRST)
def test_float64_parity_proves_architecture(name):
    """The float64 forward matches the torch float64 forward to rounding (measured 1.7e-14)."""
    cfg, sd, params, io = fixture(name)
    with jax.enable_x64(True):
        model = build_model("adm", cfg, dtype=jnp.float64)
        out = jax.jit(model.apply)({"params": params}, jnp.asarray(io["x"], jnp.float64), io["t"])
        assert out.dtype == jnp.float64
        err = float(jnp.abs(out - io["out_f64"]).max())
    assert err <= 1e-10 * np.abs(io["out_f64"]).max(), err


@pytest.mark.slow  # one more UNet compile per fixture
@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_within_tolerance(name):
    cfg, sd, params, io = fixture(name)
    out = np.asarray(forward(name, jnp.bfloat16)({"params": params}, io["x"], io["t"]))
    assert out.dtype == np.float32  # the output head runs in float32
    d, ref = out - io["out"], io["out"]
    assert np.abs(d).max() <= BF16_MAX_REL * np.abs(ref).max()
    assert np.sqrt((d**2).mean() / (ref**2).mean()) <= BF16_RMS_REL
    assert np.abs(d).max() > 1e-4  # it really ran in bfloat16


def test_timesteps_broadcast():
    """A scalar (or (1,)) timestep serves the whole batch (model-level check: test_models_unet2d
    out_t0_for_all); a wrong length is an error, not a silent broadcast."""
    from jaxdiff.models.layers import batch_timesteps

    for t in (7, np.int64(7), jnp.asarray(7), jnp.array([7])):
        np.testing.assert_array_equal(batch_timesteps(t, 3), [7, 7, 7])
    np.testing.assert_array_equal(batch_timesteps(jnp.array([1, 2, 3]), 3), [1, 2, 3])
    with pytest.raises(ValueError, match=r"timesteps must be a scalar or shape \(2,\)"):
        batch_timesteps(jnp.zeros((3,), jnp.int32), 2)
    cfg, sd, params, io = fixture("adm_tiny")
    with pytest.raises(ValueError, match="timesteps must be a scalar or shape"):
        forward("adm_tiny")({"params": params}, io["x"], jnp.zeros((3,), jnp.int32))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    cfg, sd, params, io = fixture(name)
    back = adm_keys.params_to_state_dict(params, cfg)
    assert list(back) == list(adm_keys.expected_torch_shapes(cfg))
    assert set(back) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # layouts: OIHW -> HWIO, Conv1d (O, I, 1) -> Dense (I, O), Linear (O, I) -> (I, O)
    np.testing.assert_array_equal(
        params["out_2"]["kernel"], sd["out.2.weight"].transpose(2, 3, 1, 0)
    )
    qkv = sd["input_blocks.3.1.qkv.weight"]
    np.testing.assert_array_equal(params["input_blocks_3_1"]["qkv"]["kernel"], qkv[:, :, 0].T)
    np.testing.assert_array_equal(params["time_embed_0"]["kernel"], sd["time_embed.0.weight"].T)


def test_half_precision_checkpoints_become_float32():
    import ml_dtypes

    cfg, sd, params, _ = fixture("adm_tiny_legacy")
    for dtype in (np.float16, ml_dtypes.bfloat16):
        half = {k: v.astype(dtype) for k, v in sd.items()}
        got = adm_keys.state_dict_to_params(half, cfg)
        leaves = jax.tree.leaves(got)
        assert all(leaf.dtype == np.float32 for leaf in leaves)
        want = [
            np.asarray(leaf).astype(dtype).astype(np.float32) for leaf in jax.tree.leaves(params)
        ]
        assert all(np.array_equal(a, b) for a, b in zip(leaves, want))
    bad = {**sd, "out.2.bias": sd["out.2.bias"].astype(np.int32)}
    with pytest.raises(CheckpointError, match="out.2.bias has dtype int32"):
        adm_keys.state_dict_to_params(bad, cfg)


def test_other_architecture_raises_with_every_key():
    """adm_tiny's weights against the legacy fixture's config: one error naming all problems."""
    _, sd, _, _ = fixture("adm_tiny")
    legacy_cfg = fixture("adm_tiny_legacy")[0]
    with pytest.raises(KeyMismatchError) as info:
        adm_keys.state_dict_to_params(sd, legacy_cfg, what="adm_tiny.pt")
    e = info.value
    assert "adm_tiny.pt" in str(e)
    assert "input_blocks.2.0.op.weight" in e.missing  # legacy downsamples with a conv
    assert "input_blocks.2.0.in_layers.0.weight" in e.unexpected  # tiny: a ResBlock there
    assert ("out.2.weight", (6, 32, 3, 3), (3, 32, 3, 3)) in e.shape_mismatches
    # use_scale_shift_norm shows as a doubled emb projection
    assert ("input_blocks.1.0.emb_layers.1.weight", (64, 128), (32, 128)) in e.shape_mismatches
    assert all(k in str(e) for k in e.missing + e.unexpected)


def test_missing_unexpected_and_misshaped_reported_together():
    cfg, sd, _, _ = fixture("adm_tiny_legacy")
    bad = dict(sd)
    del bad["time_embed.0.bias"]
    bad["module.extra.weight"] = np.zeros(3, np.float32)
    bad["out.0.weight"] = np.zeros(7, np.float32)
    with pytest.raises(KeyMismatchError) as info:
        adm_keys.state_dict_to_params(bad, cfg)
    e = info.value
    assert e.missing == ["time_embed.0.bias"] and e.unexpected == ["module.extra.weight"]
    assert e.shape_mismatches == [("out.0.weight", (7,), (32,))]


# Configurations beyond the fixtures (held-out checkpoints may use any of these).
BASE = dict(
    image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
    attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16,
)  # fmt: skip
CONFIGS = {
    "two_res_blocks_4_levels": dict(num_res_blocks=2, channel_mult=(1, 2, 2, 4)),
    "attention_everywhere": dict(channel_mult=(1, 1, 2), attention_resolutions=(1, 2, 4)),
    "class_conditional": dict(num_classes=10, use_scale_shift_norm=True),
    "avg_pool_nearest": dict(conv_resample=False, channel_mult=(1, 2, 2), num_res_blocks=2),
    "resblock_updown": dict(resblock_updown=True, use_scale_shift_norm=True),
    "half_width_first": dict(image_size=64, channel_mult=(0.5, 1, 2), model_channels=64),
    "fixed_heads_new_order": dict(
        num_head_channels=-1, num_heads=4, num_heads_upsample=2, use_new_attention_order=True
    ),
    "no_sigma_grayscale": dict(in_channels=1, out_channels=1, attention_resolutions=()),
}


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_layout_matches_independent_port(variant):
    cfg = {**BASE, **CONFIGS[variant]}
    shapes = adm_keys.expected_torch_shapes(cfg)
    assert shapes == adm_state_dict_shapes(**cfg)
    assert sum(math.prod(s) for s in shapes.values()) == param_count(abstract_params("adm", cfg))
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    back = adm_keys.params_to_state_dict(adm_keys.state_dict_to_params(sd, cfg), cfg)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


def test_heldout_style_forward():
    """Class labels with avg-pool/nearest resampling and 2 res blocks: runs, labels matter."""
    cfg = {**BASE, **CONFIGS["class_conditional"], "conv_resample": False, "num_res_blocks": 2}
    model = build_model("adm", cfg)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    t, y = jnp.array([3, 900]), jnp.array([1, 7])
    rng = np.random.default_rng(0)
    shapes = adm_keys.expected_torch_shapes(cfg)
    sd = {k: 0.05 * rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    params = adm_keys.state_dict_to_params(sd, cfg)
    f = jax.jit(model.apply)
    out = np.asarray(f({"params": params}, x, t, y))
    assert out.shape == (2, 16, 16, 6) and np.isfinite(out).all() and np.abs(out).max() > 0.01
    assert np.abs(out - np.asarray(f({"params": params}, x, t, y + 1))).max() > 1e-3
    with pytest.raises(ValueError, match="needs labels y"):
        jax.eval_shape(model.init, jax.random.key(0), x, t)
    with pytest.raises(ValueError, match="labels y given to an unconditional"):
        jax.eval_shape(build_model("adm", BASE).init, jax.random.key(0), x, t, y)


def _torch_attention(qkv, heads, legacy):
    """numpy port of QKVAttentionLegacy / QKVAttention on (B, 3*C, T) tensors."""
    b, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = np.split(qkv.reshape(b * heads, 3 * ch, length), 3, axis=1)
    else:
        q, k, v = (a.reshape(b * heads, ch, length) for a in np.split(qkv, 3, axis=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = np.einsum("bct,bcs->bts", q * scale, k * scale)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("heads", [1, 4])
def test_attention_block_matches_torch_channel_order(heads, legacy):
    x = np.random.default_rng(heads).standard_normal((2, 4, 4, 32)).astype(np.float32)
    block = AttentionBlock(heads, use_new_attention_order=not legacy)
    params = block.init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: 0.2 * rng.standard_normal(p.shape).astype(np.float32), params)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(block.apply)({"params": params}, x))
    tok = x.reshape(2, 16, 32)
    g = tok.reshape(2, 16, 32, 1)  # GroupNorm(32 groups) of 32 channels: per-channel over tokens
    g = (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + 1e-5)
    g = g.reshape(2, 16, 32) * params["norm"]["scale"] + params["norm"]["bias"]
    qkv = g @ params["qkv"]["kernel"] + params["qkv"]["bias"]  # (B, T, 3C)
    a = _torch_attention(qkv.transpose(0, 2, 1), heads, legacy).transpose(0, 2, 1)
    want = tok + a @ params["proj_out"]["kernel"] + params["proj_out"]["bias"]
    want = want.reshape(x.shape)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="dims=3"):
        build_model("adm", {**BASE, "dims": 3})
    with pytest.raises(ValueError, match="unknown field.*'num_channels'"):
        build_model("adm", {**BASE, "num_channels": 32})
    with pytest.raises(ValueError, match="missing required.*'num_res_blocks'"):
        build_model("adm", {k: v for k, v in BASE.items() if k != "num_res_blocks"})
    with pytest.raises(ValueError, match="num_head_channels=24 does not divide"):
        build_model("adm", {**BASE, "num_head_channels": 24})
    with pytest.raises(ValueError, match="num_heads_upsample=3 does not divide"):
        build_model("adm", {**BASE, "num_head_channels": -1, "num_heads_upsample": 3})
    with pytest.raises(KeyError, match="unknown model architecture 'unet3d'"):
        build_model("unet3d", BASE)


def test_load_pretrained_round_trip_and_mismatch(tmp_path):
    from jaxdiff.checkpoint import save_pretrained
    from jaxdiff.models import load_pretrained

    cfg, sd, params, io = fixture("adm_tiny_legacy")
    meta = {"architecture": "adm", "model_config": cfg, "diffusion": {"num_timesteps": 1000}}
    save_pretrained(tmp_path / "ok", params, meta)
    model, loaded, got_meta = load_pretrained(tmp_path / "ok", dtype=jnp.bfloat16)
    assert model == build_model("adm", cfg, dtype=jnp.bfloat16)
    assert got_meta["model_config"]["num_heads_upsample"] == 2
    pairs = zip(jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(loaded))
    assert all(pa == pb and np.array_equal(a, b) for (pa, a), (pb, b) in pairs)
    # weights of another configuration under this sidecar: named, not a crash in a sampler
    save_pretrained(tmp_path / "bad", fixture("adm_tiny")[2], meta)
    with pytest.raises(KeyMismatchError, match="out_2/kernel"):
        load_pretrained(tmp_path / "bad")
    save_pretrained(tmp_path / "arch", params, {**meta, "architecture": "unet3d"})
    with pytest.raises(KeyError, match="unknown architecture 'unet3d'"):
        load_pretrained(tmp_path / "arch")
