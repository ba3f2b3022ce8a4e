"""ADM architectures: the released checkpoints' flags, config parsing, and inference from shapes.

`PRESETS[name]` is the `UNetModel` constructor kwargs (the `model_config` of "adm");
`PRESET_DIFFUSION[name]` how that checkpoint was trained. The head count and the attention order
of an ADM are not visible in its weights, so a checkpoint matching no preset needs them spelled
out (`--preset` or `--config`); `infer_adm_config` says exactly which.
"""

from __future__ import annotations

import json

import numpy as np

from jaxdiff.models import adm as adm_model

NUM_CLASSES = 1000  # guided_diffusion/script_util.py: class_cond -> ImageNet's 1000 labels

PRESETS: dict[str, dict] = {
    # DPS2022/diffusion-posterior-sampling configs/model_config.yaml -> models/ffhq_10m.pt
    # (create_model flags: num_channels 128, num_res_blocks 1, channel_mult "", learn_sigma,
    # attention_resolutions 16, num_heads 4, num_head_channels 64, use_scale_shift_norm,
    # resblock_updown, use_fp16 False). 93,563,910 parameters in 362 tensors.
    "ffhq256": {
        "image_size": 256,
        "in_channels": 3,
        "model_channels": 128,
        "out_channels": 6,
        "num_res_blocks": 1,
        "attention_resolutions": (16,),
        "dropout": 0.0,
        "channel_mult": (1, 1, 2, 2, 4, 4),
        "conv_resample": True,
        "dims": 2,
        "num_classes": None,
        "use_checkpoint": False,
        "use_fp16": False,
        "num_heads": 4,
        "num_head_channels": 64,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "use_new_attention_order": False,
    },
    # openai/guided-diffusion README, 256x256_diffusion_uncond.pt: MODEL_FLAGS
    # "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256
    # --learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64
    # --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
    # (use_fp16 is a runtime cast; the weights are the same). 552,814,086 parameters, 566 tensors.
    "imagenet256_uncond": {
        "image_size": 256,
        "in_channels": 3,
        "model_channels": 256,
        "out_channels": 6,
        "num_res_blocks": 2,
        "attention_resolutions": (8, 16, 32),
        "dropout": 0.0,
        "channel_mult": (1, 1, 2, 2, 4, 4),
        "conv_resample": True,
        "dims": 2,
        "num_classes": None,
        "use_checkpoint": False,
        "use_fp16": False,
        "num_heads": 4,
        "num_head_channels": 64,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "resblock_updown": True,
        "use_new_attention_order": False,
    },
}

# Both: create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear")
# (DPS configs/diffusion_config.yaml; guided-diffusion README DIFFUSION_FLAGS).
_LINEAR_1000 = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "variance_type": "learned_range",
    "schedule_dtype": "float64",
}
PRESET_DIFFUSION: dict[str, dict] = {name: dict(_LINEAR_1000) for name in PRESETS}

# guided_diffusion/script_util.py create_model(...) keyword defaults.
_CREATE_MODEL_DEFAULTS = {
    "channel_mult": "",
    "learn_sigma": False,
    "class_cond": False,
    "use_checkpoint": False,
    "attention_resolutions": "16",
    "num_heads": 1,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
    "dropout": 0.0,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
}
# Where script_util.model_and_diffusion_defaults() (what the command-line scripts start from)
# and create_model's keyword defaults disagree: (create_model, command line).
_AMBIGUOUS_DEFAULTS = {
    "attention_resolutions": ("16", "16,8"),
    "num_heads": (1, 4),
    "use_scale_shift_norm": (False, True),
}
# Flags that sit beside the model flags in guided-diffusion / DPS configs and do not change it.
_NON_MODEL_FLAGS = {
    "model_path", "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl",
    "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas", "sigma_small",
    "batch_size", "num_samples", "use_ddim", "clip_denoised", "classifier_scale",
}  # fmt: skip
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def _resolutions(value, image_size: int) -> tuple[int, ...]:
    """create_model's attention_resolutions ("32,16,8", 16 or [32, 16]) -> downsample rates."""
    if isinstance(value, int):
        values = [value]
    elif isinstance(value, str):
        values = [int(v) for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        values = [int(v) for v in value]
    else:
        raise ValueError(f"attention_resolutions={value!r}: expected '32,16,8', 16 or a list")
    for res in values:
        if res <= 0 or image_size % res:
            raise ValueError(
                f"attention_resolutions: {res} does not divide image_size {image_size}"
            )
    return tuple(image_size // res for res in values)


def config_from_create_model_flags(flags: dict) -> dict:
    """guided-diffusion / DPS `create_model(**flags)` -> `UNetModel` kwargs (same arithmetic)."""
    model_keys = set(_CREATE_MODEL_DEFAULTS) | {"image_size", "num_channels", "num_res_blocks"}
    unknown = sorted(set(flags) - model_keys - _NON_MODEL_FLAGS)
    if unknown:
        raise ValueError(f"create_model flags: unknown flag(s) {unknown}")
    missing = [k for k in ("image_size", "num_channels", "num_res_blocks") if k not in flags]
    if missing:
        raise ValueError(f"create_model flags: missing {missing}")
    ambiguous = [k for k in _AMBIGUOUS_DEFAULTS if k not in flags]
    if flags.get("num_head_channels", -1) != -1 and "num_heads" in ambiguous:
        ambiguous.remove("num_heads")  # head channels win; use the scripts' default
        flags = {**flags, "num_heads": 4}
    if ambiguous:
        raise ValueError(
            f"create_model flags: give {ambiguous} explicitly: guided-diffusion's command-line "
            "defaults (model_and_diffusion_defaults) and create_model's own defaults differ "
            f"there ({ {k: _AMBIGUOUS_DEFAULTS[k] for k in ambiguous} })"
        )
    f = {**_CREATE_MODEL_DEFAULTS, **{k: v for k, v in flags.items() if k in model_keys}}
    size = int(f["image_size"])
    mult = f["channel_mult"]
    if mult in ("", None):
        if size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"channel_mult='' has no default for image_size {size} "
                f"(defaults exist for {sorted(_DEFAULT_CHANNEL_MULT)}); give channel_mult"
            )
        mult = _DEFAULT_CHANNEL_MULT[size]
    elif isinstance(mult, str):
        mult = tuple(int(m) for m in mult.split(","))
    return {
        "image_size": size,
        "in_channels": 3,
        "model_channels": int(f["num_channels"]),
        "out_channels": 6 if f["learn_sigma"] else 3,
        "num_res_blocks": int(f["num_res_blocks"]),
        "attention_resolutions": _resolutions(f["attention_resolutions"], size),
        "dropout": float(f["dropout"]),
        "channel_mult": tuple(mult),
        "conv_resample": True,
        "dims": 2,
        "num_classes": NUM_CLASSES if f["class_cond"] else None,
        "use_checkpoint": bool(f["use_checkpoint"]),
        "use_fp16": bool(f["use_fp16"]),
        "num_heads": int(f["num_heads"]),
        "num_head_channels": int(f["num_head_channels"]),
        "num_heads_upsample": int(f["num_heads_upsample"]),
        "use_scale_shift_norm": bool(f["use_scale_shift_norm"]),
        "resblock_updown": bool(f["resblock_updown"]),
        "use_new_attention_order": bool(f["use_new_attention_order"]),
    }


def adm_config_from_json(obj: dict) -> dict:
    """An ADM `model_config` from any of the JSON shapes people have at hand:

    (a) guided-diffusion/DPS `create_model` flags (`num_channels`, resolutions string, ...);
    (b) `UNetModel` constructor kwargs (`model_channels`, downsample rates);
    (c) `{"kwargs": {...}, ...}` (the fixtures' sidecars): the kwargs as they are.
    The result is validated (unknown or missing fields raise ValueError naming them).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"ADM config must be a JSON object, got {type(obj).__name__}")
    if "kwargs" in obj:
        obj = obj["kwargs"]
        if not isinstance(obj, dict):
            raise ValueError('ADM config: "kwargs" must be a JSON object')
    if "model_channels" in obj:
        cfg = dict(obj)
    elif "num_channels" in obj:
        cfg = config_from_create_model_flags(obj)
    else:
        raise ValueError(
            "ADM config: neither UNetModel kwargs (model_channels) nor create_model flags "
            "(num_channels) nor {'kwargs': ...}"
        )
    adm_model.normalize_config(cfg)  # raises on bad fields
    for key in ("attention_resolutions", "channel_mult"):
        cfg[key] = tuple(cfg[key])
    return cfg


# ------------------------------------------------------------------ inference from a state dict
# What an ADM state dict cannot show: the attention heads and channel order.
INVISIBLE_FLAGS = (
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_new_attention_order",
)


def _shapes(state_dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in state_dict.items()}


def _expected(model_config: dict) -> dict[str, tuple[int, ...]]:
    from jaxdiff.convert.adm import expected_torch_shapes

    return expected_torch_shapes(model_config)


def _block_count(shapes, prefix: str) -> int:
    idx = {int(k.split(".")[1]) for k in shapes if k.startswith(prefix + ".")}
    return max(idx) + 1 if idx else 0


def _structural_candidates(shapes: dict) -> list[dict]:
    """Configs (attention flags left at placeholders) whose layout may match `shapes`."""
    need = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise ValueError(f"not an ADM UNetModel state dict: no {missing}")
    mc = shapes["time_embed.0.weight"][1]
    in_ch = shapes["input_blocks.0.0.weight"][1]
    ch0 = shapes["input_blocks.0.0.weight"][0]
    out_ch = shapes["out.2.weight"][0]
    n_in = _block_count(shapes, "input_blocks")
    n_out = _block_count(shapes, "output_blocks")
    num_classes = shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None
    emb_key = "middle_block.0.emb_layers.1.weight"
    mid_ch = shapes.get("middle_block.0.out_layers.0.weight", (0,))[0]
    scale_shift = emb_key in shapes and shapes[emb_key][0] == 2 * mid_ch
    candidates = []
    blocks = max(n_in, n_out)
    has = {k[:i] for k in shapes for i, c in enumerate(k) if c == "."}  # every module path
    for levels in range(1, blocks + 1):
        if blocks % levels or blocks // levels < 2:
            continue
        nrb = blocks // levels - 1
        downs = {k * (nrb + 1) for k in range(1, levels)}
        ups = {(k + 1) * (nrb + 1) - 1 for k in range(levels - 1)}
        if any(
            f"input_blocks.{i}.0.in_layers.0" not in has for i in range(1, blocks) if i not in downs
        ):
            continue  # a res block position without a res block
        kinds = {
            "conv" if f"input_blocks.{i}.0.op" in has
            else "resblock" if f"input_blocks.{i}.0.in_layers.0" in has
            else "pool"
            for i in downs
        }  # fmt: skip
        if len(kinds) > 1:
            continue
        kind = kinds.pop() if kinds else "conv"
        # output blocks: an up-sampler (sub-index 1 or 2) exactly where this layout puts one
        upsampled = {
            o for o in range(blocks) for j in (1, 2) for m in ("conv", "in_layers.0")
            if f"output_blocks.{o}.{j}.{m}" in has
        }  # fmt: skip
        if kind != "pool" and upsampled != ups or kind == "pool" and upsampled:
            continue
        mult, attn_ds = [], []
        for level in range(levels):
            first = 1 + level * (nrb + 1)
            mult.append(shapes[f"input_blocks.{first}.0.out_layers.0.weight"][0] / mc)
            if f"input_blocks.{first}.1.qkv" in has:
                attn_ds.append(2**level)
        mult = tuple(int(m) if float(m).is_integer() else m for m in mult)
        if int(mult[0] * mc) != ch0:
            continue
        candidates.append(
            {
                "image_size": None,
                "in_channels": in_ch,
                "model_channels": mc,
                "out_channels": out_ch,
                "num_res_blocks": nrb,
                "attention_resolutions": tuple(attn_ds),
                "dropout": 0.0,
                "channel_mult": mult,
                "conv_resample": kind != "pool",
                "dims": 2,
                "num_classes": num_classes,
                "use_checkpoint": False,
                "use_fp16": False,
                "num_heads": 1,
                "num_head_channels": -1,
                "num_heads_upsample": -1,
                "use_scale_shift_norm": scale_shift,
                "resblock_updown": kind == "resblock",
                "use_new_attention_order": False,
            }
        )
    return candidates


def infer_adm_config(state_dict: dict, extra: dict | None = None) -> dict:
    """An ADM `model_config` from a state dict's keys and shapes.

    A checkpoint whose every key and shape matches a preset gets that preset. Otherwise the
    layout (channels, levels, res blocks, attention placement, resampling, scale-shift, classes)
    is read from the shapes, but the head count and attention order are not in them: pass them
    in `extra` (num_heads or num_head_channels, use_new_attention_order; optionally
    num_heads_upsample, image_size), else a ValueError says which flags are needed.
    """
    shapes = _shapes(state_dict)
    for cfg in PRESETS.values():
        mc = cfg["model_channels"]
        if shapes.get("time_embed.0.weight") == (4 * mc, mc) and _expected(cfg) == shapes:
            return dict(cfg)
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(INVISIBLE_FLAGS) - {"image_size", "dropout"})
    if unknown:
        raise ValueError(f"infer_adm_config: extra may only hold {INVISIBLE_FLAGS}, got {unknown}")
    matches = []
    for cand in _structural_candidates(shapes):
        probe = {**cand, "image_size": 2 ** (len(cand["channel_mult"]) + 2)}
        if _expected(probe) == shapes:
            matches.append(cand)
    if not matches:
        raise ValueError(
            "cannot infer the ADM architecture from this state dict (it matches no preset "
            f"{sorted(PRESETS)} and no UNetModel layout); pass --config with the UNetModel "
            "kwargs or create_model flags"
        )
    if len(matches) > 1:
        raise ValueError(
            "the state dict's shapes fit several ADM layouts "
            f"({[m['channel_mult'] for m in matches]} channel_mult); pass --config"
        )
    cfg = matches[0]
    has_heads = "num_heads" in extra or "num_head_channels" in extra
    if not has_heads or "use_new_attention_order" not in extra or "image_size" not in extra:
        shown = {k: v for k, v in cfg.items() if k not in INVISIBLE_FLAGS and k != "image_size"}
        raise ValueError(
            "this ADM checkpoint matches no preset and its attention settings are not visible "
            "in the weights. Pass --preset NAME (one of "
            f"{sorted(PRESETS)}) or --config FILE.json with num_heads or num_head_channels, "
            "num_heads_upsample (if it differs from num_heads) and use_new_attention_order "
            "(false = guided-diffusion's QKVAttentionLegacy) and image_size, on top of what "
            f"the shapes say: {json.dumps(shown)}"
        )
    cfg.update(extra)
    adm_model.normalize_config(cfg)
    return cfg
