"""Classical inpainting with OpenCV: Telea's fast marching (Telea 2004) and Navier-Stokes
(Bertalmio et al. 2001).

HOST-SIDE, NOT jit-able: cv2.inpaint runs on uint8 numpy images, so these functions pull y to
the host. Call them eagerly, one image at a time (a Python loop over a batch).

The DPS mask is 1 = keep, 0 = missing; OpenCV's mask is the OPPOSITE (non-zero = to inpaint), so it
is flipped here. A pixel is filled when any channel's mask is 0. Known pixels are returned exactly
as measured (float, not re-quantised); only the holes come from OpenCV's uint8 result.
"""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np

from jaxdiff.baselines.common import INPAINTING, check_measurement, register_baseline, require_param
from jaxdiff.data import to_uint8, to_unit

_FLAGS = {"telea": cv2.INPAINT_TELEA, "navier_stokes": cv2.INPAINT_NS}


def _cv2_inpaint(name: str, y, operator, op_params, radius: float):
    y = np.asarray(check_measurement(name, y, operator))
    mask = np.asarray(require_param(name, operator, op_params, "mask", "inpainting"))
    mask = np.broadcast_to(mask, y.shape)
    if not radius > 0:
        raise ValueError(f"{name}: radius must be > 0, got {radius}")
    hole = np.any(mask < 0.5, axis=-1)
    cv_mask = hole.astype(np.uint8) * 255  # OpenCV: non-zero = inpaint
    u8 = to_uint8(y)
    channels = y.shape[-1]
    if channels in (1, 3):
        filled = cv2.inpaint(np.ascontiguousarray(u8), cv_mask, float(radius), _FLAGS[name])
        filled = filled.reshape(y.shape)
    else:  # OpenCV takes 1 or 3 channels only: fill the others one by one
        filled = np.stack(
            [
                cv2.inpaint(np.ascontiguousarray(u8[..., c]), cv_mask, float(radius), _FLAGS[name])
                for c in range(channels)
            ],
            axis=-1,
        )
    out = np.where(hole[..., None], to_unit(filled), y)
    return jnp.asarray(out, jnp.float32)


@register_baseline(operators=INPAINTING, host_side=True)
def telea(y, operator, op_params, *, radius: float = 3.0):
    """Telea (2004) fast-marching inpainting, `cv2.inpaint(..., INPAINT_TELEA)`. Host-side."""
    return _cv2_inpaint("telea", y, operator, op_params, radius)


@register_baseline(operators=INPAINTING, host_side=True)
def navier_stokes(y, operator, op_params, *, radius: float = 3.0):
    """Bertalmio et al. (2001) Navier-Stokes inpainting, cv2.inpaint(..., INPAINT_NS). Host-side."""
    return _cv2_inpaint("navier_stokes", y, operator, op_params, radius)
