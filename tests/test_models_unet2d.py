"""diffusers UNet2DModel: parity on the fixture folders (new and old key names), config space."""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdiff.convert import keymap
from jaxdiff.convert import unet2d as unet2d_keys
from jaxdiff.convert.torch_pickle import load_state_dict
from jaxdiff.errors import KeyMismatchError
from jaxdiff.models import abstract_params, build_model, param_count
from jaxdiff.models.unet2d import Attention
from tests.conftest import FIXTURES
from tests.torch_layouts import unet2d_state_dict_shapes

# bfloat16 vs torch float32, measured: max |err| / max |out| 0.031, RMS err / RMS out 0.018.
BF16_MAX_REL, BF16_RMS_REL = 0.08, 0.05


@functools.cache
def fixture():
    cfg = json.loads((FIXTURES / "diffusers_tiny" / "config.json").read_text())
    sd = load_file(FIXTURES / "diffusers_tiny" / "diffusion_pytorch_model.safetensors")
    io = dict(np.load(FIXTURES / "diffusers_tiny_io.npz"))
    for k in ("x", "out", "out_f64", "out_t0_for_all"):
        io[k] = io[k].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return cfg, sd, unet2d_keys.state_dict_to_params(sd, cfg), io


@functools.cache
def forward(dtype=jnp.float32):
    return jax.jit(build_model("unet2d", fixture()[0], dtype=dtype).apply)


def test_float32_parity_and_scalar_timestep():
    cfg, sd, params, io = fixture()
    assert param_count(params) == 280_755
    t0 = np.full_like(io["t"], io["t"][0])
    with jax.default_matmul_precision("highest"):
        out = np.asarray(forward()({"params": params}, io["x"], io["t"]))
        # torch got a 0-d timestep (as DDPMPipeline passes it) and broadcast it to the batch;
        # batch_timesteps does that here (test_models_adm.test_timesteps_broadcast): one compile
        out0 = np.asarray(forward()({"params": params}, io["x"], t0))
    scale = np.abs(io["out"]).max()
    assert np.abs(out - io["out"]).max() <= 1e-5 * scale  # measured 2.7e-6 (abs), |out| <= 1.7
    assert np.abs(out0 - io["out_t0_for_all"]).max() <= 1e-5 * scale


def test_old_attention_key_names_give_the_same_params():
    """The .bin copy with query/key/value/proj_attn names converts to bitwise the same params."""
    cfg, sd, params, io = fixture()
    old_cfg = json.loads((FIXTURES / "diffusers_tiny_oldkeys" / "config.json").read_text())
    old = load_state_dict(FIXTURES / "diffusers_tiny_oldkeys" / "diffusion_pytorch_model.bin")
    assert sum(".query." in k or ".proj_attn." in k for k in old) == 16
    old_params = unet2d_keys.state_dict_to_params(old, old_cfg)
    pairs = zip(jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(old_params))
    for (pa, a), (pb, b) in pairs:
        assert pa == pb and np.array_equal(a, b), pa
    # 1x1-conv-shaped old attention weights (C, C, 1, 1) are accepted too
    conv_shaped = {
        k: v[:, :, None, None] if k.endswith(("query.weight", "proj_attn.weight")) else v
        for k, v in old.items()
    }
    again = unet2d_keys.state_dict_to_params(conv_shaped, old_cfg)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params))
    )


def test_old_and_new_name_for_one_weight_is_an_error():
    cfg, sd, _, _ = fixture()
    both = {**sd, "mid_block.attentions.0.query.weight": sd["mid_block.attentions.0.to_q.weight"]}
    with pytest.raises(KeyMismatchError) as info:
        unet2d_keys.state_dict_to_params(both, cfg)
    assert info.value.unexpected == ["mid_block.attentions.0.query.weight"]


@pytest.mark.slow  # one more UNet compile
def test_float64_parity():
    """diffusers' float64 model still builds the sinusoid in float32 (embeddings.py) and so does
    ours; the rest agrees to rounding: measured 8.3e-10 (vs 2.3e-6 for torch f32 vs f64)."""
    cfg, sd, params, io = fixture()
    with jax.enable_x64(True):
        model = build_model("unet2d", cfg, dtype=jnp.float64)
        out = jax.jit(model.apply)({"params": params}, jnp.asarray(io["x"], jnp.float64), io["t"])
        assert out.dtype == jnp.float64
        err = float(jnp.abs(out - io["out_f64"]).max())
    assert err <= 1e-8 * np.abs(io["out_f64"]).max(), err


@pytest.mark.slow
def test_bfloat16_within_tolerance():
    cfg, sd, params, io = fixture()
    out = np.asarray(forward(jnp.bfloat16)({"params": params}, io["x"], io["t"]))
    d, ref = out - io["out"], io["out"]
    assert np.abs(d).max() <= BF16_MAX_REL * np.abs(ref).max()
    assert np.sqrt((d**2).mean() / (ref**2).mean()) <= BF16_RMS_REL
    assert np.abs(d).max() > 1e-4


def test_round_trip_and_layouts():
    cfg, sd, params, io = fixture()
    back = unet2d_keys.params_to_state_dict(params, cfg)
    assert set(back) == set(sd)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    w = sd["down_blocks.1.attentions.0.to_q.weight"]
    np.testing.assert_array_equal(params["down_blocks_1"]["attentions_0"]["to_q"]["kernel"], w.T)
    w = sd["time_embedding.linear_1.weight"]
    np.testing.assert_array_equal(params["time_embedding"]["linear_1"]["kernel"], w.T)


def test_wrong_config_reports_every_key():
    cfg, sd, _, _ = fixture()
    other = {**cfg, "layers_per_block": 2, "norm_num_groups": 16}
    with pytest.raises(KeyMismatchError) as info:
        unet2d_keys.state_dict_to_params(sd, other, what="diffusers_tiny")
    e = info.value
    assert "down_blocks.0.resnets.1.conv1.weight" in e.missing
    assert "up_blocks.0.resnets.2.conv1.weight" in e.missing
    assert not e.unexpected  # with one more layer the skip widths move too:
    assert ("up_blocks.1.resnets.1.norm1.weight", (48,), (64,)) in e.shape_mismatches
    assert str(e).startswith("diffusers_tiny:")


BASE = {
    "block_out_channels": [16, 32],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": None,
}
CONFIGS = {
    "google_ddpm_256": {  # google/ddpm-cat-256's config.json
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "attention_head_dim": None,
    },  # fmt: skip
    "diffusers_defaults": None,  # UNet2DModel() with every default
    "multi_head_attention": {"attention_head_dim": 8, "layers_per_block": 2},
    "class_embeds_no_mid_attention": {"num_class_embeds": 10, "add_attention": False},
    "scale_shift": {"resnet_time_scale_shift": "scale_shift", "time_embedding_dim": 96},
    "no_mid_block": {"mid_block_type": None, "out_channels": 6},
    "attn_norm_groups": {"attn_norm_num_groups": 4},
}


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_layout_matches_independent_port(variant):
    cfg = {**BASE, **CONFIGS[variant]} if CONFIGS[variant] else {}
    shapes = keymap.torch_shapes(unet2d_keys.layout(cfg))
    want = unet2d_state_dict_shapes(
        {
            "down_block_types": ("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
            "up_block_types": ("AttnUpBlock2D",) * 3 + ("UpBlock2D",),
            **cfg,
        }
    )
    assert shapes == want
    assert sum(math.prod(s) for s in shapes.values()) == param_count(abstract_params("unet2d", cfg))


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_matches_reference(heads):
    """Multi-head attention (attention_head_dim set), which the fixture (one head) cannot show."""
    c, hd = 32, 32 // heads
    x = np.random.default_rng(0).standard_normal((2, 4, 4, c)).astype(np.float32)
    block = Attention(hd, groups=8, eps=1e-5, rescale_output_factor=2.0)
    params = block.init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: 0.2 * rng.standard_normal(p.shape).astype(np.float32), params)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(block.apply)({"params": params}, x))
    tok = x.reshape(2, 16, c)
    g = tok.reshape(2, 16, 8, 4)
    g = (g - g.mean((1, 3), keepdims=True)) / np.sqrt(g.var((1, 3), keepdims=True) + 1e-5)
    g = g.reshape(2, 16, c) * params["group_norm"]["scale"] + params["group_norm"]["bias"]

    def proj(name, h):
        return h @ params[name]["kernel"] + params[name]["bias"]

    q, k, v = (proj(f"to_{n}", g).reshape(2, 16, heads, hd).transpose(0, 2, 1, 3) for n in "qkv")
    w = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    w = np.exp(w - w.max(-1, keepdims=True))
    a = (w / w.sum(-1, keepdims=True)) @ v  # (B, heads, T, hd)
    a = a.transpose(0, 2, 1, 3).reshape(2, 16, c)
    want = ((proj("to_out_0", a) + tok) / 2.0).reshape(x.shape)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]}, "down_block_types"),
        ({"up_block_types": ["AttnUpBlock2D", "SkipUpBlock2D"]}, "up_block_types"),
        ({"up_block_types": ["UpBlock2D"]}, "up_block_types.*needs 2 entries"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"downsample_type": "resnet"}, "downsample_type='resnet'"),
        ({"resnet_time_scale_shift": "spatial"}, "resnet_time_scale_shift='spatial'"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"mid_block_type": "UNetMidBlock2DCrossAttn"}, "mid_block_type"),
        ({"norm_num_groups": 12}, "norm_num_groups=12"),
        ({"cross_attention_dim": 768}, r"unknown field\(s\) \['cross_attention_dim'\]"),
        ({"_class_name": "UNet2DConditionModel"}, "_class_name='UNet2DConditionModel'"),
    ],
)
def test_unsupported_config_names_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        build_model("unet2d", {**BASE, **change})
