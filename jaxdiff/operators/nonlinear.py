"""Nonlinear operators: Fourier phase retrieval (DPS guided_diffusion/measurements.py).

`phase_retrieval(image_shape, oversample=2.0)`: zero-pad int(oversample / 8 * H) rows top and
bottom (and int(oversample / 8 * W) columns each side; DPS hard-codes 256, giving 64 px for the
official 256x256 images), centred orthonormal 2-D FFT per channel (fastMRI `fft2c_new`: ifftshift,
fft2(norm="ortho"), fftshift over H, W), then the magnitude. No adjoint. The magnitude has a
zero-safe gradient (0 where the coefficient is exactly 0, like torch's abs) so guidance through an
all-zero image is finite. The nonlinear bkse blur of DPS needs external weights and is left out.
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

    def __init__(self, image_shape, oversample=2.0):
        super().__init__(image_shape)
        if not oversample >= 0:
            raise ValueError(f"phase_retrieval: oversample must be >= 0, got {oversample}")
        H, W, _ = self.image_shape
        self.oversample = float(oversample)
        self.pad = (int(oversample / 8.0 * H), int(oversample / 8.0 * W))

    def _output_shape(self):
        H, W, C = self.image_shape
        ph, pw = self.pad
        return (H + 2 * ph, W + 2 * pw, C)

    def _apply(self, op_params, x):
        del op_params
        ph, pw = self.pad
        padded = jnp.pad(x, ((ph, ph), (pw, pw), (0, 0)))
        spec = jnp.fft.ifftshift(padded, axes=(0, 1))
        spec = jnp.fft.fft2(spec, axes=(0, 1), norm="ortho")
        spec = jnp.fft.fftshift(spec, axes=(0, 1))
        return _safe_abs(spec).astype(x.dtype)
