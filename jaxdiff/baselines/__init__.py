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

from jaxdiff import tasks
from jaxdiff.baselines import inpainting, least_squares  # noqa: F401 (their registrations)
from jaxdiff.baselines.common import BASELINES, HOST_SIDE, OPERATORS
from jaxdiff.baselines.deconvolution import tv_objective

# Which baselines apply to which task presets (jaxdiff.tasks), from the operators each declares
# at its definition; "measurement" (the measurement itself, jaxdiff.experiment) is every task's
# floor. The tables leave the other cells empty, like the paper's.
APPLIES: dict[str, tuple[str, ...]] = {
    "measurement": tuple(tasks.TASKS),
    **{
        name: tuple(t for t in tasks.TASKS if tasks.get_task(t).operator in OPERATORS[name])
        for name in BASELINES.names()
    },
}


__all__ = ["APPLIES", "BASELINES", "HOST_SIDE", "tv_objective"]
