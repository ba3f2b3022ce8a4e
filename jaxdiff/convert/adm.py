"""guided-diffusion / ADM `UNetModel` state dict <-> jaxdiff "adm" params.

The Flax module names are the torch names with "." written "_", so the map is a rename plus
layouts: Conv2d (O, I, kh, kw) -> (kh, kw, I, O); the attention Conv1d k=1 (O, I, 1) and Linear
(O, I) -> Dense (I, O). The expected key list comes from the model itself (keymap.layout).
"""

from __future__ import annotations

import numpy as np

from jaxdiff.convert import keymap

CONV1D = ("qkv", "proj_out")  # AttentionBlock's 1x1 Conv1d layers, Dense in Flax


def layout(model_config: dict) -> list[keymap.Entry]:
    return keymap.model_layout("adm", model_config, conv1d_modules=CONV1D)


def state_dict_to_params(
    state_dict: dict[str, np.ndarray], model_config: dict, what: str = "adm state dict"
) -> dict:
    """guided-diffusion state dict -> nested float32 numpy params for `build_model("adm", ...)`.

    Raises KeyMismatchError listing every missing, unexpected and mis-shaped torch key.
    """
    return keymap.state_dict_to_params(state_dict, layout(model_config), what)


def params_to_state_dict(params, model_config: dict) -> dict[str, np.ndarray]:
    """The inverse: params -> the state dict guided-diffusion's UNetModel(**config) loads."""
    return keymap.params_to_state_dict(params, layout(model_config))


def expected_torch_shapes(model_config: dict) -> dict[str, tuple[int, ...]]:
    """{torch key: shape} a checkpoint of this configuration holds (no weights computed)."""
    return keymap.torch_shapes(layout(model_config))
