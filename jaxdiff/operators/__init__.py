"""Forward operators A and measurement noise: y = noise(A(x)) for one image (see base.py).

    op = get_operator("super_resolution", image_shape=(256, 256, 3), factor=4)
    op_params = op.sample(key); y = op.apply(op_params, x); x_adj = op.adjoint(op_params, y)
    noise = get_noise("gaussian", sigma=0.05); y = noise.sample(key, op.apply(op_params, x))

Every operator takes `image_shape=(H, W, C)` first; official DPS settings are the defaults.
Names: denoise, colorize, inpaint, inpaint_box, inpaint_random, gaussian_blur, motion_blur, blur,
super_resolution, phase_retrieval, high_dynamic_range.
"""

from __future__ import annotations

from jaxdiff.operators.base import Operator
from jaxdiff.operators.blur import Blur, GaussianBlur, MotionBlur
from jaxdiff.operators.inpainting import Inpaint, InpaintBox, InpaintRandom
from jaxdiff.operators.noise import NOISES, get_noise
from jaxdiff.operators.nonlinear import HighDynamicRange, PhaseRetrieval
from jaxdiff.operators.resize import SuperResolution
from jaxdiff.operators.simple import Colorize, Denoise
from jaxdiff.registry import Registry

OPERATORS: Registry = Registry("operator")
for _cls in (
    Denoise,
    Colorize,
    Inpaint,
    InpaintBox,
    InpaintRandom,
    GaussianBlur,
    MotionBlur,
    Blur,
    SuperResolution,
    PhaseRetrieval,
    HighDynamicRange,
):
    OPERATORS.register(_cls.name)(_cls)


def get_operator(name: str, **config) -> Operator:
    """Build an operator by name; `config` holds image_shape=(H, W, C) and its settings."""
    return OPERATORS.get(name)(**config)


__all__ = ["NOISES", "OPERATORS", "Operator", "get_noise", "get_operator"]
