"""Classical baselines, one registry: `BASELINES.get(name)(y, operator, op_params, **cfg) -> x`.

Each takes ONE measurement y (the operator's output shape) and returns one image (H, W, C) in
[-1, 1], mirroring the operator contract (vmap over batches, except the host-side OpenCV ones).

| name              | tasks                   | notes                                           |
|-------------------|-------------------------|-------------------------------------------------|
| zero_fill         | all with a natural image| holes 0 / y itself / nearest upsampling (floor)  |
| adjoint           | every linear operator   | A^T y (floor)                                   |
| least_squares     | every linear operator   | CG on (A^T A + ridge I) x = A^T y               |
| tv_least_squares  | every linear operator   | 0.5||Ax - y||^2 + lam TV(x), Adam (optax)       |
| bicubic           | super-resolution        | jax.image.resize 'cubic' (Keys a = -0.5)        |
| wiener            | blur (op_params kernel) | FFT, mirror-extended for reflect boundaries     |
| telea             | inpainting (mask)       | cv2.inpaint TELEA; host-side, not jit-able      |
| navier_stokes     | inpainting (mask)       | cv2.inpaint NS; host-side, not jit-able         |
"""

from __future__ import annotations

from jaxdiff.baselines.deconvolution import tv_least_squares, tv_objective, wiener
from jaxdiff.baselines.inpainting import navier_stokes, telea
from jaxdiff.baselines.least_squares import adjoint, bicubic, least_squares, zero_fill
from jaxdiff.registry import Registry

BASELINES: Registry = Registry("baseline")
for _fn in (
    zero_fill,
    adjoint,
    least_squares,
    tv_least_squares,
    bicubic,
    wiener,
    telea,
    navier_stokes,
):
    BASELINES.register(_fn.__name__)(_fn)

# Host-side (numpy / OpenCV) baselines: loop over a batch instead of jax.vmap / jax.jit.
HOST_SIDE = frozenset({"telea", "navier_stokes"})


def get_baseline(name: str):
    """The baseline function registered under `name` (KeyError lists the known names)."""
    return BASELINES.get(name)


__all__ = ["BASELINES", "HOST_SIDE", "get_baseline", "tv_objective"]
