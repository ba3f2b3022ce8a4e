"""PiGDM, pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz, ICLR 2023; checked against
NVlabs/RED-diff algos/pgdm.py; docs/methods.md):

    x0_hat = x0(x_t, eps_theta(x_t))                           (no clamp)
    mat    = R_t (y - A x0_hat),  R_t = (A^T A + lam_t I)^-1 A^T,  lam_t = sigma^2 / r_t^2
    g      = (d x0_hat / d x_t)^T mat                          (a VJP through the UNet; mat is
                                                                held constant)
    x_next = sqrt(abar_s) x0_hat + c1 z + c2 eps_theta + w sqrt(abar_s) sqrt(abar_t) g
             (c1, c2 of DDIM with eta; w = `scale`, the code's grad_term_weight)

started from x = sqrt(abar_T) R_T y + sqrt(1 - abar_T) z at the first respaced step (the code's
initialize; `init="noise"` starts from N(0, I)). R_t is the paper's noisy-measurement weighting
A^T (r_t^2 A A^T + sigma^2 I)^-1 with r_t^2 = 1 - abar_t, times r_t^2 so that sigma = 0 gives
the noiseless R = A^+ of Algorithm 1 and the code (`form="noisy"`, the default; sigma is the
traced hyperparameter, by default the noise model's std). `form="pinv"` is the code's exact
computation A^+ y - A^+ A x0_hat with the operator's own pinv (sigma unused): the official code
has no sigma_y weighting, and its A^+ of noisy data amplifies the noise of ill-conditioned blurs.

A^+ / R_t use jaxdiff.operators.pinv: the SVD closed form where the operator has one, else
conjugate gradients, so any linear operator works. The official H_functions and their quirks
(Deblurring's tiled singulars and pass-through pinv, Inpainting2's noisy holes) are operators of
their own (jaxdiff.operators.official_svd), passed only for parity. Options that exist for the
code's behaviour: `project_observed=True` is its "in2" branch (x0_hat <- x0_hat - A^+ A x0_hat +
A^+ y and g <- g - A^+ A g, i.e. x0 * (1 - m) + y * m and g * (1 - m) for a mask; form "pinv"
only), `awd=False` its non-adaptive weight (coeff - c2 sqrt(abar_t / (1 - abar_t)), eps from
x0_hat).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.gaussian import ddim_coefficients, ddim_step
from jaxdiff.operators.pinv import make_pinv, make_tikhonov
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    check_measurement,
    noise_sigma,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)

INITS = ("pinv", "noise")
FORMS = ("noisy", "pinv")


@register_sampler(
    "pigdm",
    needs=("operator", "linear", "measurement"),
    hparams={"eta": 1.0, "scale": 1.0, "sigma": None},
    ranges={"eta": "[0, 1]", "scale": "[0, 100]", "sigma": "[0, 2]"},
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
    form: str = "noisy",
    project_observed: bool = False,
    awd: bool = True,
    clip_denoised: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"eta", "scale", "sigma"}, replay=None)`.

    form: "noisy" (R_t with sigma) or "pinv" (the code's A^+ y - A^+ A x0_hat). pinv:
    `pinv(op_params, y) -> image` overriding the operator's A^+ in form "pinv" (else
    `make_pinv(operator, method=pinv_method, maxiter=cg_maxiter)`; form "noisy" uses
    `make_tikhonov` with the same method). sigma defaults to the noise model's std, else 0.
    replay: {"x_T": the standard normal draw of the initialisation (H,W,C), "noise": (K,H,W,C)}.
    The trajectory records the step's input x_in, x0_hat (before any projection), eps, mat (the
    bracket above) and the raw guidance VJP grad_term.
    """
    if operator is None or not hasattr(operator, "apply"):
        raise ValueError("pigdm: needs an Operator (apply / adjoint / optional .svd)")
    if init not in INITS:
        raise ValueError(f"pigdm: init must be one of {INITS}, got {init!r}")
    if form not in FORMS:
        raise ValueError(f"pigdm: form must be one of {FORMS}, got {form!r}")
    if pinv is not None and form != "pinv":
        raise ValueError("pigdm: pinv= replaces A^+ in form='pinv' only")
    if project_observed and form != "pinv":
        raise ValueError("pigdm: project_observed (the code's in2 branch) needs form='pinv'")
    if defaults["sigma"] is None:
        defaults = {**defaults, "sigma": noise_sigma(noise) or 0.0}
    forward = operator.apply
    if form == "pinv":
        pinv_fn = (
            pinv
            if pinv is not None
            else make_pinv(operator, method=pinv_method, maxiter=cg_maxiter)
        )
    else:
        solve = make_tikhonov(operator, method=pinv_method, maxiter=cg_maxiter)
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
        sigma2 = jnp.square(h["sigma"].astype(dtype))

        def lam(a_t):  # sigma^2 / r_t^2, r_t^2 = 1 - abar_t
            return sigma2 / (1 - a_t)

        a_T = schedule.gather(schedule.num_steps - 1, dtype)["alphas_cumprod"]
        if form == "pinv":
            pinv_y = pinv_fn(op_params, y).astype(dtype)
        else:
            pinv_y = solve(op_params, y, lam(a_T)).astype(dtype)
        if tuple(pinv_y.shape) != shape:
            raise ValueError(f"pigdm: pinv(y) has shape {tuple(pinv_y.shape)}, expected {shape}")
        z0, k_loop = initial_x(key, replay, shape, dtype, "pigdm")
        if init == "pinv":
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
            c = pred["c"]
            a_t, a_s = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            if form == "pinv":
                p_x0 = pinv_fn(op_params, forward(op_params, x0))
                mat = pinv_y - p_x0
            else:
                mat = solve(op_params, y - forward(op_params, x0), lam(a_t)).astype(dtype)
            (grad,) = pullback(mat)
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
