"""Nonlinear operators: Fourier phase retrieval (DPS guided_diffusion/measurements.py, DAPS
forward_operator/__init__.py) and high dynamic range (DAPS).

`phase_retrieval(image_shape, oversample=2.0, pad_reference=None, unit_input=False)`: zero-pad
int(oversample / 8 * R) rows top and bottom and columns each side, R = `pad_reference` or the
image's own height / width (DPS hard-codes R = 256, DAPS takes it as `resolution`, default 256:
64 px for the official 256x256 images, and at any other size too), centred orthonormal 2-D FFT
per channel (fastMRI `fft2c_new`: ifftshift, fft2(norm="ortho"), fftshift over H, W), then the
magnitude. `unit_input` maps x from [-1, 1] to [0, 1] first, as DAPS does (DPS does not). No
adjoint. The magnitude has a zero-safe gradient (0 where the coefficient is exactly 0, like
torch's abs) so guidance through an all-zero image is finite. The nonlinear bkse blur of DPS
and DAPS needs external weights and is left out.

`high_dynamic_range(image_shape, scale=2.0)`: clip(scale * x, -1, 1), DAPS's HDR task
(`HighDynamicRange`, configs/task/hdr.yaml: scale 2); its gradient is scale inside [-1, 1]
including the bounds (torch's clamp), 0 outside.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.operators.base import Operator


def _safe_abs(z):
    power = jnp.real(z) ** 2 + jnp.imag(z) ** 2
    positive = power > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, power, 1.0)), 0.0)


class PhaseRetrieval(Operator):
    """|F(pad(x))| with a centred orthonormal FFT."""

    name = "phase_retrieval"
    linear = False

    def __init__(self, image_shape, oversample=2.0, pad_reference=None, unit_input=False):
        super().__init__(image_shape)
        if not oversample >= 0:
            raise ValueError(f"phase_retrieval: oversample must be >= 0, got {oversample}")
        if pad_reference is not None and not int(pad_reference) >= 1:
            raise ValueError(f"phase_retrieval: pad_reference must be >= 1, got {pad_reference}")
        H, W, _ = self.image_shape
        rh, rw = (H, W) if pad_reference is None else (int(pad_reference),) * 2
        self.oversample = float(oversample)
        self.unit_input = bool(unit_input)
        self.pad = (int(oversample / 8.0 * rh), int(oversample / 8.0 * rw))

    def _output_shape(self):
        H, W, C = self.image_shape
        ph, pw = self.pad
        return (H + 2 * ph, W + 2 * pw, C)

    def _apply(self, op_params, x):
        del op_params
        ph, pw = self.pad
        if self.unit_input:
            x = x * 0.5 + 0.5
        padded = jnp.pad(x, ((ph, ph), (pw, pw), (0, 0)))
        spec = jnp.fft.ifftshift(padded, axes=(0, 1))
        spec = jnp.fft.fft2(spec, axes=(0, 1), norm="ortho")
        spec = jnp.fft.fftshift(spec, axes=(0, 1))
        return _safe_abs(spec).astype(x.dtype)


class HighDynamicRange(Operator):
    """clip(scale * x, -1, 1): the detail a saturated exposure loses."""

    name = "high_dynamic_range"
    linear = False

    def __init__(self, image_shape, scale=2.0):
        super().__init__(image_shape)
        if not scale > 0:
            raise ValueError(f"high_dynamic_range: scale must be > 0, got {scale}")
        self.scale = float(scale)

    def _apply(self, op_params, x):
        del op_params
        v = x * jnp.asarray(self.scale, x.dtype)
        inside = (v >= -1) & (v <= 1)
        return jnp.where(inside, v, jnp.clip(v, -1, 1))  # gradient 1 on the bounds, as torch's
