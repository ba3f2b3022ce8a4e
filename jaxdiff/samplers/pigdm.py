"""PiGDM, pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz, ICLR 2023), as the official
code NVlabs/RED-diff algos/pgdm.py computes it (docs/methods/pigdm.md):

    x0_hat = x0(x_t, eps_theta(x_t))                           (no clamp)
    g      = (d x0_hat / d x_t)^T [A^+ y - A^+ A x0_hat]        (a VJP through the UNet; the
                                                                bracket is held constant)
    x_next = sqrt(abar_s) x0_hat + c1 z + c2 eps_theta + w sqrt(abar_s) sqrt(abar_t) g
             (c1, c2 of DDIM with eta; w = `scale`, the code's grad_term_weight)

started from x = sqrt(abar_T) A^+ y + sqrt(1 - abar_T) z at the first respaced step (the code's
initialize; `init="noise"` starts from N(0, I)). This is the paper's noiseless pseudo-inverse
guidance; the measurement noise enters only through y (the code has no sigma_y weighting).

A^+ is the operator's true Moore-Penrose pseudo-inverse by default (jaxdiff.operators.pinv: the
SVD closed form, else conjugate gradients), so any linear operator works. The official H_functions
and their quirks (Deblurring's tiled singulars and pass-through pinv, Inpainting2's noisy holes)
are operators of their own (jaxdiff.operators.official_svd), passed only for parity. Options that
exist for the code's behaviour: `project_observed=True` is its "in2" branch (x0_hat <- x0_hat -
A^+ A x0_hat + A^+ y and g <- g - A^+ A g, i.e. x0 * (1 - m) + y * m and g * (1 - m) for a mask),
`awd=False` its non-adaptive weight (coeff - c2 sqrt(abar_t / (1 - abar_t)), eps from x0_hat).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.gaussian import ddim_coefficients, ddim_step
from jaxdiff.operators.pinv import make_pinv
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    check_measurement,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)

INITS = ("pinv", "noise")


@register_sampler(
    "pigdm",
    needs=("operator", "linear", "measurement"),
    hparams={"eta": 1.0, "scale": 1.0},
    grad=True,
)
def make_pigdm(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    pinv=None,
    pinv_method: str = "auto",
    cg_maxiter: int = 200,
    init: str = "pinv",
    project_observed: bool = False,
    awd: bool = True,
    clip_denoised: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"eta", "scale"}, replay=None, valid=True)`.

    pinv: `pinv(op_params, y) -> image` overriding the operator's A^+ (else built by
    `make_pinv(operator, method=pinv_method, maxiter=cg_maxiter)`). replay: {"x_T": the standard
    normal draw of the initialisation (H,W,C), "noise": (K,H,W,C)}. The trajectory records the
    step's input x_in, x0_hat (before any projection), eps, mat = A^+ y - A^+ A x0_hat and the
    raw guidance VJP grad_term.
    """
    del noise
    if operator is None or not hasattr(operator, "apply"):
        raise ValueError("pigdm: needs an Operator (apply / adjoint / optional .svd)")
    if init not in INITS:
        raise ValueError(f"pigdm: init must be one of {INITS}, got {init!r}")
    forward = operator.apply
    pinv_fn = (
        pinv if pinv is not None else make_pinv(operator, method=pinv_method, maxiter=cg_maxiter)
    )
    shape = resolve_image_shape(image_shape, operator, None, "pigdm")
    steps = np.arange(schedule.num_steps)[::-1]

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "pigdm")
        eta, scale = h["eta"].astype(dtype), h["scale"].astype(dtype)
        if y is None:
            raise ValueError("pigdm: needs the measurement y")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "pigdm")
        pinv_y = pinv_fn(op_params, y).astype(dtype)
        if tuple(pinv_y.shape) != shape:
            raise ValueError(f"pigdm: pinv(y) has shape {tuple(pinv_y.shape)}, expected {shape}")
        z0, k_loop = initial_x(key, replay, shape, dtype, "pigdm")
        if init == "pinv":
            a_T = schedule.gather(schedule.num_steps - 1, dtype)["alphas_cumprod"]
            x_init = jnp.sqrt(a_T) * pinv_y + jnp.sqrt(1 - a_T) * z0
        else:
            x_init = z0

        def step(x, k, z, state):
            def x0_fn(x_in):
                pred = predict_x0(
                    model_fn, params, schedule, x_in, k, clip_denoised=clip_denoised, remat=remat
                )
                return pred["x0"], pred

            x0, pullback, pred = jax.vjp(x0_fn, x, has_aux=True)
            p_x0 = pinv_fn(op_params, forward(op_params, x0))
            mat = pinv_y - p_x0
            (grad,) = pullback(mat)
            c = pred["c"]
            a_t, a_s = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            eps, x0_used, g = pred["eps"], x0, grad
            coeff = jnp.sqrt(a_s)
            if not awd:
                _, c2 = ddim_coefficients(a_t, a_s, eta)
                coeff = coeff - c2 * jnp.sqrt(a_t) / jnp.sqrt(1 - a_t)
            coeff = coeff * jnp.sqrt(a_t) * scale
            if project_observed:
                x0_used = (x0 - p_x0) + pinv_y
                g = grad - pinv_fn(op_params, forward(op_params, grad))
            if not awd:
                eps = (x - x0_used * jnp.sqrt(a_t)) / jnp.sqrt(1 - a_t)
            x_next = ddim_step(x0_used, eps, a_t, a_s, eta, z) + g * coeff
            record = {"x_in": x, "x0_hat": x0, "eps": pred["eps"], "mat": mat, "grad_term": grad}
            return x_next, state, record

        return chain(step, x_init, steps, key=k_loop, replay=replay, loop=loop, label="pigdm")

    return sample
