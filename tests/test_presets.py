"""ADM presets at full size (no weights), config parsing, and inference from state-dict shapes."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxdiff.convert import adm as adm_keys
from jaxdiff.convert import presets
from jaxdiff.models import abstract_params, param_count
from jaxdiff.models.adm import _heads, normalize_config
from tests.conftest import FIXTURES
from tests.torch_layouts import adm_state_dict_shapes

# guided-diffusion create_model (derived by replaying the constructor): parameters, tensors.
COUNTS = {"ffhq256": (93_563_910, 362), "imagenet256_uncond": (552_814_086, 566)}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_full_size_parameter_counts_from_eval_shape(name):
    tree = abstract_params("adm", presets.PRESETS[name])
    assert (param_count(tree), len(jax.tree.leaves(tree))) == COUNTS[name]
    assert presets.PRESET_DIFFUSION[name]["variance_type"] == "learned_range"
    assert presets.PRESET_DIFFUSION[name]["num_timesteps"] == 1000


# guided-diffusion unet.py module tree, spot checks: key -> torch shape (None = must not exist).
SPOT = {
    "ffhq256": {
        "time_embed.0.weight": (512, 128),
        "input_blocks.0.0.weight": (128, 3, 3, 3),
        "input_blocks.2.0.in_layers.2.weight": (128, 128, 3, 3),  # ResDown128
        "input_blocks.2.0.skip_connection.weight": None,
        "input_blocks.5.0.skip_connection.weight": (256, 128, 1, 1),  # Res128->256 @64
        "input_blocks.9.0.skip_connection.weight": (512, 256, 1, 1),
        "input_blocks.9.1.qkv.weight": (1536, 512, 1),  # Attn @16
        "input_blocks.11.0.emb_layers.1.weight": (1024, 512),  # scale-shift: 2 * out
        "input_blocks.11.1.qkv.weight": None,  # no attention @8
        "input_blocks.12.0.in_layers.0.weight": None,
        "middle_block.1.qkv.weight": (1536, 512, 1),
        "middle_block.1.proj_out.weight": (512, 512, 1),
        "output_blocks.0.0.in_layers.0.weight": (1024,),
        "output_blocks.1.1.in_layers.2.weight": (512, 512, 3, 3),  # ResUp at .1
        "output_blocks.2.1.qkv.weight": (1536, 512, 1),
        "output_blocks.3.0.in_layers.0.weight": (768,),  # 512 + 256 skip
        "output_blocks.3.1.qkv.weight": (1536, 512, 1),
        "output_blocks.3.2.in_layers.0.weight": (512,),  # the ResUp at output_blocks.3.2
        "output_blocks.3.2.out_layers.3.weight": (512, 512, 3, 3),
        "output_blocks.3.2.skip_connection.weight": None,
        "output_blocks.4.0.skip_connection.weight": (256, 768, 1, 1),
        "output_blocks.9.1.in_layers.0.weight": (128,),
        "output_blocks.11.0.in_layers.0.weight": (256,),
        "output_blocks.12.0.in_layers.0.weight": None,
        "out.0.weight": (128,),
        "out.2.weight": (6, 128, 3, 3),
    },
    "imagenet256_uncond": {
        "time_embed.2.weight": (1024, 1024),
        "input_blocks.7.0.skip_connection.weight": (512, 256, 1, 1),
        "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # Attn @32
        "input_blocks.13.0.skip_connection.weight": (1024, 512, 1, 1),
        "input_blocks.13.1.qkv.weight": (3072, 1024, 1),
        "input_blocks.17.1.qkv.weight": (3072, 1024, 1),
        "input_blocks.18.0.in_layers.0.weight": None,
        "output_blocks.2.2.in_layers.0.weight": (1024,),  # up at 2.2, 5.2, 8.2, 11.1, 14.1
        "output_blocks.5.0.in_layers.0.weight": (1536,),
        "output_blocks.5.2.in_layers.0.weight": (1024,),
        "output_blocks.6.0.out_layers.3.weight": (512, 512, 3, 3),
        "output_blocks.8.2.in_layers.0.weight": (512,),
        "output_blocks.9.1.qkv.weight": None,
        "output_blocks.11.0.in_layers.0.weight": (768,),
        "output_blocks.11.1.in_layers.0.weight": (512,),
        "output_blocks.14.1.in_layers.0.weight": (256,),
        "output_blocks.17.0.in_layers.0.weight": (512,),
        "output_blocks.18.0.in_layers.0.weight": None,
        "out.2.weight": (6, 256, 3, 3),
    },
}


@pytest.mark.parametrize("name", sorted(SPOT))
def test_full_size_torch_keys_match_the_module_tree(name):
    cfg = presets.PRESETS[name]
    shapes = adm_keys.expected_torch_shapes(cfg)
    assert shapes == adm_state_dict_shapes(**cfg)  # the whole list, via an independent port
    for key, shape in SPOT[name].items():
        assert shapes.get(key) == shape, key
    # heads are not in the shapes: num_head_channels 64 wins over num_heads 4
    assert [_heads(normalize_config(cfg), c) for c in (512, 1024)] == [8, 16]


def _zeros(shapes):
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # no memory


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_preset_inferred_from_shapes(name):
    sd = _zeros(adm_keys.expected_torch_shapes(presets.PRESETS[name]))
    assert presets.infer_adm_config(sd) == presets.PRESETS[name]


def test_dps_and_guided_diffusion_flags_give_the_presets():
    # DPS configs/model_config.yaml (YAML makes attention_resolutions an int)
    dps = {
        "image_size": 256, "num_channels": 128, "num_res_blocks": 1, "channel_mult": "",
        "learn_sigma": True, "class_cond": False, "use_checkpoint": False,
        "attention_resolutions": 16, "num_heads": 4, "num_head_channels": 64,
        "num_heads_upsample": -1, "use_scale_shift_norm": True, "dropout": 0.0,
        "resblock_updown": True, "use_fp16": False, "use_new_attention_order": False,
        "model_path": "models/ffhq_10m.pt",
    }  # fmt: skip
    assert presets.adm_config_from_json(dps) == presets.PRESETS["ffhq256"]
    # guided-diffusion README MODEL_FLAGS + DIFFUSION_FLAGS for 256x256_diffusion_uncond.pt
    gd = {
        "attention_resolutions": "32,16,8", "class_cond": False, "diffusion_steps": 1000,
        "image_size": 256, "learn_sigma": True, "noise_schedule": "linear",
        "num_channels": 256, "num_head_channels": 64, "num_res_blocks": 2,
        "resblock_updown": True, "use_fp16": True, "use_scale_shift_norm": True,
    }  # fmt: skip
    assert presets.adm_config_from_json(gd) == {
        **presets.PRESETS["imagenet256_uncond"],
        "use_fp16": True,  # a runtime cast only: same weights, same Flax model
    }


def test_three_json_forms_agree_on_the_fixture():
    fixture = json.loads((FIXTURES / "adm_tiny.json").read_text())
    a = presets.adm_config_from_json(fixture)  # {"kwargs": ...}
    b = presets.adm_config_from_json(fixture["kwargs"])  # UNetModel kwargs
    c = presets.adm_config_from_json(fixture["dps_create_model_kwargs"])  # create_model flags
    assert a == b == c
    assert a["attention_resolutions"] == (2, 4) and a["channel_mult"] == (1, 2, 2)


# the flags whose defaults differ between create_model and guided-diffusion's scripts
FLAGS = {
    "image_size": 64, "num_channels": 64, "num_res_blocks": 2, "attention_resolutions": "16",
    "num_heads": 4, "use_scale_shift_norm": True,
}  # fmt: skip


@pytest.mark.parametrize(
    "size, mult",
    [(64, (1, 2, 3, 4)), (128, (1, 1, 2, 3, 4)), (512, (0.5, 1, 1, 2, 2, 4, 4))],
)
def test_channel_mult_defaults_by_image_size(size, mult):
    flags = {**FLAGS, "image_size": size}
    cfg = presets.adm_config_from_json(flags)
    assert cfg["channel_mult"] == mult and cfg["attention_resolutions"] == (size // 16,)
    assert cfg["out_channels"] == 3 and cfg["num_classes"] is None
    cond = presets.adm_config_from_json({**flags, "class_cond": True, "learn_sigma": True})
    assert cond["num_classes"] == 1000 and cond["out_channels"] == 6


@pytest.mark.parametrize(
    "obj, match",
    [
        ({**FLAGS, "image_size": 48}, "channel_mult=''"),
        ({**FLAGS, "num_chanels": 3}, "num_chanels"),
        ({"image_size": 64, "num_channels": 64}, "missing.*num_res_blocks"),
        ({**FLAGS, "attention_resolutions": "24"}, "24 does not divide"),
        ({"image_size": 64, "num_channels": 64, "num_res_blocks": 1}, "give .*explicitly"),
        ({"kwargs": {"model_channels": 32}}, "missing required"),
        ({"channels": 3}, "neither UNetModel kwargs"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_problem(obj, match):
    with pytest.raises(ValueError, match=match):
        presets.adm_config_from_json(obj)


EXTRA_KEYS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")


@pytest.mark.parametrize("name", ["adm_tiny", "adm_tiny_legacy"])
def test_infer_needs_the_invisible_attention_flags(name):
    from jaxdiff.convert.torch_pickle import load_state_dict

    kwargs = json.loads((FIXTURES / f"{name}.json").read_text())["kwargs"]
    sd = load_state_dict(FIXTURES / f"{name}.pt", progress=False)
    with pytest.raises(ValueError) as info:
        presets.infer_adm_config(sd)
    msg = str(info.value)
    for word in ("--preset", "--config", "num_heads", "num_head_channels"):
        assert word in msg
    assert "use_new_attention_order" in msg and "image_size" in msg
    extra = {k: kwargs[k] for k in EXTRA_KEYS + ("image_size",)}
    assert normalize_config(presets.infer_adm_config(sd, extra)) == normalize_config(kwargs)


HELD_OUT_STYLE = {
    "pool_classes_4_levels": dict(
        num_res_blocks=2, channel_mult=(1, 2, 2, 4), conv_resample=False, num_classes=10,
        attention_resolutions=(4, 8),
    ),
    "equal_mults_updown": dict(channel_mult=(1, 1, 1), resblock_updown=True, num_res_blocks=1),
    "equal_mults_updown_2": dict(channel_mult=(1, 1), resblock_updown=True, num_res_blocks=2),
    "half_width_conv": dict(channel_mult=(0.5, 1, 2), model_channels=64, use_scale_shift_norm=True),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(HELD_OUT_STYLE))
def test_infer_layouts_beyond_the_fixtures(variant):
    cfg = normalize_config(
        {
            "image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 6,
            "num_res_blocks": 1, "attention_resolutions": (2,), "num_head_channels": 16,
            **HELD_OUT_STYLE[variant],
        }
    )  # fmt: skip
    sd = _zeros(adm_keys.expected_torch_shapes(cfg))
    extra = {k: cfg[k] for k in EXTRA_KEYS + ("image_size",)}
    assert normalize_config(presets.infer_adm_config(sd, extra)) == cfg


def test_not_an_adm_state_dict():
    with pytest.raises(ValueError, match="not an ADM UNetModel state dict"):
        presets.infer_adm_config({"conv_in.weight": np.zeros((4, 3, 3, 3), np.float32)})
