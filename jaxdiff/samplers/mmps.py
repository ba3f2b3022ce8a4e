"""MMPS, moment matching posterior sampling (Rozet, Andry, Lanusse, Louppe, "Learning diffusion
priors from observations by expectation maximization", NeurIPS 2024; checked against
probabilists/azula azula/guidance/mmps.py `MMPSDenoiser` on azula/sample.py `DDPMSampler` /
`DDIMSampler`; docs/methods.md).

The denoiser's mean is replaced by the mean of the Gaussian that matches Tweedie's first two
moments of p(x0 | x_t), conditioned on y ~ N(A x0, sigma^2 I) (jaxdiff.samplers.covariance):

    x0_hat   = x0(x_t, eps_theta(x_t))                       (no clamp by default)
    C u      = sigma^2 u + A Cov[x0 | x_t] A^T u,  Cov v = (1 - abar)/sqrt(abar) J^T v
    u        = C^-1 (y - A x0_hat)                           (`iterations` GMRES or CG steps)
    x0_y     = x0_hat + (1 - abar)/sqrt(abar) J^T A^T u      (J = d x0_hat / d x_t)
    x_next   = sqrt(abar_s) x0_y + c1 z + c2 eps_y,  eps_y = (x_t - sqrt(abar) x0_y)/sqrt(1 - abar)

with (c1, c2) of DDIM at `eta` (eta = 1: azula's DDPMSampler, the DDPM fixed-small step; azula's
DDIMSampler scales the variance by its eta, so its eta is this one squared). A nonlinear A is
linearized at x0_hat, as azula does (`jvp` of A and the gradient of y_hat). hparams (traced):
eta, sigma (the measurement noise std on the [-1, 1] scale; default the noise model's).
Static: solver ("gmres", azula's default, "cg", or "dense": the exact solve, one network
product per measurement entry), iterations (1, azula's default), product ("vjp", azula's
J^T v, or "jvp"), clip_denoised. Network cost per step: one forward pass and
iterations + 1 Jacobian products.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.samplers import covariance as cov
from jaxdiff.samplers.base import register_sampler
from jaxdiff.samplers.common import (
    noise_sigma,
    resolve_image_shape,
)


def _nfe(num_steps: int, options: dict) -> int:
    """One forward pass per step (the Jacobian products are not counted as evaluations)."""
    del options
    return int(num_steps)


@register_sampler(
    "mmps",
    needs=("operator", "measurement"),
    hparams={"eta": 1.0, "sigma": None},
    ranges={"eta": "[0, 1]", "sigma": "[0, 2]"},
    nfe=_nfe,
    grad=True,
)
def make_mmps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    solver: str = "gmres",
    iterations: int = 1,
    product: str = "vjp",
    clip_denoised: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"eta", "sigma"}, replay=None)`.

    replay: {"x_T": (H,W,C), "noise": (K,H,W,C)}. The trajectory records x0_hat, x0_y (the
    moment-matched mean), residual (y - A x0_hat), u (the solve) and eps_y. `sample.update(
    params, x, k, z, y, op_params, hparams)` is one step alone (teacher-forced replays).
    """
    if operator is None or not hasattr(operator, "apply"):
        raise ValueError("mmps: needs an Operator (the forward model A)")
    if solver not in cov.SOLVERS:
        raise ValueError(f"mmps: solver must be one of {cov.SOLVERS}, got {solver!r}")
    if product not in cov.PRODUCTS:
        raise ValueError(f"mmps: product must be one of {cov.PRODUCTS}, got {product!r}")
    if int(iterations) < 1 and solver != "dense":
        raise ValueError(f"mmps: iterations must be >= 1, got {iterations}")
    if defaults["sigma"] is None:
        defaults = {**defaults, "sigma": noise_sigma(noise) or 0.0}
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "mmps")
    forward_mode = product == "jvp"

    def solve(tw, a, y, sigma2):
        return cov.moment_matched_x0(
            tw, a, y, sigma2, covariance=solver, iterations=iterations, product=product
        )

    return cov.moment_matching_sampler(
        "mmps", model_fn, schedule, forward, defaults, shape, dtype, loop,
        clip_denoised=clip_denoised, remat=remat, forward_mode=forward_mode, solve=solve,
    )  # fmt: skip
