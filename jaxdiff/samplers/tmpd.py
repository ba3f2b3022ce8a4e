"""TMPD, Tweedie moment projected diffusion (Boys, Girolami, Pidstrigach, Reich, Mosca, Akyildiz,
"Tweedie moment projected diffusions for inverse problems", TMLR 2024; checked against
bb515/tmpdjax tmpd/solvers.py `KPDDPM` (full), `KPDDPMdiag` (diagonal), `KPDDPMplus` (row sums,
the code's image experiments) and probabilists/azula azula/guidance/tmpd.py `TMPDenoiser` (row
sums); docs/methods.md).

Each DDPM step's x0 is the mean of the Gaussian projection of p(x0 | x_t, y) built from
Tweedie's first two moments (jaxdiff.samplers.covariance), for a linear A and y ~ N(A x0,
sigma^2 I):

    x0_hat = x0(x_t, eps_theta(x_t)),  J = d x0_hat / d x_t,  r_t = (1 - abar)/sqrt(abar)
    C      = sigma^2 I + r_t A J A^T                           (covariance="full")
           ~ sigma^2 I + diag(r_t A J^T A^T)                   ("diag": its exact diagonal)
           ~ sigma^2 I + diag(r_t A J^T A^T 1)                 ("rowsum": the row sums)
    x0_y   = x0_hat + r_t J^T A^T C^-1 (y - A x0_hat)
    x_next = sqrt(abar_s) x0_y + c1 z + c2 eps_y    (DDIM at eta; eta = 1 is the code's DDPM
                                                      ancestral step with x0_y)

tmpdjax writes C / r_t (`C_yy = H grad_H_x_0 + noise_std^2 / ratio`); the same x0_y. Its full
form materializes the Jacobian (`jacrev`) and solves densely: `solver="dense"` does that with
one JVP per measurement entry (tmpdjax's matrix reads H J H^T: `product="jvp"`, the default
here), `solver="cg"` / `"gmres"` truncate it to `iterations` products. The diagonal form costs
one VJP per measurement entry (tmpdjax's `vmap` over an identity), the row-sum form one.
hparams (traced): eta, sigma (default: the noise model's std).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.samplers import covariance as cov
from jaxdiff.samplers.base import register_sampler
from jaxdiff.samplers.common import (
    noise_sigma,
    resolve_image_shape,
)

FORMS = ("full", "diag", "rowsum")


def _nfe(num_steps: int, options: dict) -> int:
    """One forward pass per step (the Jacobian products are not counted as evaluations)."""
    del options
    return int(num_steps)


@register_sampler(
    "tmpd",
    needs=("operator", "linear", "measurement"),
    hparams={"eta": 1.0, "sigma": None},
    ranges={"eta": "[0, 1]", "sigma": "[0, 2]"},
    nfe=_nfe,
    grad=True,
)
def make_tmpd(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    covariance: str = "rowsum",
    solver: str = "cg",
    iterations: int = 20,
    product: str = "jvp",
    chunk: int = 64,
    clip_denoised: bool = False,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"eta", "sigma"}, replay=None)`.

    covariance: "rowsum" (the code's image experiments), "diag" or "full" (with `solver`,
    `iterations`, `product`). replay: {"x_T": (H,W,C), "noise": (K,H,W,C)}. The trajectory
    records x0_hat, x0_y, residual, u (C^-1 residual) and eps_y; `sample.update(params, x, k,
    z, y, op_params, hparams)` is one step alone (teacher-forced replays).
    """
    if operator is None or not hasattr(operator, "apply"):
        raise ValueError("tmpd: needs an Operator (the forward model A)")
    if covariance not in FORMS:
        raise ValueError(f"tmpd: covariance must be one of {FORMS}, got {covariance!r}")
    if solver not in cov.SOLVERS:
        raise ValueError(f"tmpd: solver must be one of {cov.SOLVERS}, got {solver!r}")
    if product not in cov.PRODUCTS:
        raise ValueError(f"tmpd: product must be one of {cov.PRODUCTS}, got {product!r}")
    if int(iterations) < 1:
        raise ValueError(f"tmpd: iterations must be >= 1, got {iterations}")
    if defaults["sigma"] is None:
        defaults = {**defaults, "sigma": noise_sigma(noise) or 0.0}
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "tmpd")
    method = solver if covariance == "full" else covariance
    forward_mode = covariance == "full" and product == "jvp"

    def solve(tw, a, y, sigma2):
        return cov.moment_matched_x0(
            tw, a, y, sigma2, covariance=method, iterations=iterations, product=product,
            chunk=chunk,
        )  # fmt: skip

    return cov.moment_matching_sampler(
        "tmpd", model_fn, schedule, forward, defaults, shape, dtype, loop,
        clip_denoised=clip_denoised, remat=remat, forward_mode=forward_mode, solve=solve,
    )  # fmt: skip
