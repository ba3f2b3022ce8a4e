"""diffusers UNet2DModel state dict <-> jaxdiff "unet2d" params.

Accepts both attention naming schemes: the current `to_q/to_k/to_v/to_out.0` and the old
`query/key/value/proj_attn` (diffusers renames them on load, modeling_utils
`_fix_state_dict_keys_on_load`); old-format weights may also be 1x1-conv shaped (C, C, 1, 1).
"""

from __future__ import annotations

import re

import numpy as np

from jaxdiff.convert import keymap

KEEP = ("linear_1", "linear_2")  # time_embedding.linear_1 is one torch name
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def layout(model_config: dict) -> list[keymap.Entry]:
    return keymap.model_layout("unet2d", model_config, keep=KEEP)


def rename_old_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old attention names -> new ones; a key present under both names is left as it was,
    so the duplicate shows up as unexpected instead of one silently winning."""
    out = {}
    for key, value in state_dict.items():
        m = _OLD.match(key)
        if m:
            new = f"{m[1]}.{OLD_ATTENTION_NAMES[m[2]]}.{m[3]}"
            if new not in state_dict:
                if m[3] == "weight" and np.ndim(value) == 4 and np.shape(value)[2:] == (1, 1):
                    value = np.asarray(value).reshape(np.shape(value)[:2])
                key = new
        out[key] = value
    return out


def state_dict_to_params(
    state_dict: dict[str, np.ndarray], model_config: dict, what: str = "unet2d state dict"
) -> dict:
    """diffusers state dict (new or old attention names) -> nested float32 numpy params."""
    return keymap.state_dict_to_params(rename_old_keys(state_dict), layout(model_config), what)


def params_to_state_dict(params, model_config: dict) -> dict[str, np.ndarray]:
    """params -> diffusers state dict with the current key names."""
    return keymap.params_to_state_dict(params, layout(model_config))
