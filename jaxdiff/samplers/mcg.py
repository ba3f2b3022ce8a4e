"""MCG, manifold constrained gradients (Chung et al., NeurIPS 2022; official code
HJ-harry/MCG_diffusion, and the `mcg` conditioning of DPS's repository
DPS2022/diffusion-posterior-sampling guided_diffusion/condition_methods.py
`ManifoldConstraintGradient`, the baseline of DPS's tables; docs/methods.md). A DPS step followed
by a projection onto the measurement, noised to the step's level:

    x0_hat = clamp(x0(x_t, eps_theta(x_t)))
    x'     = posterior_mean(x0_hat, x_t) + 1[k>0] exp(logvar/2) z
    x''    = x' - scale * d ||y - A x0_hat|| / d x_t            (through the UNet, as DPS)
    y_s    = sqrt(abar_prev) y + sqrt(1 - abar_prev) z_y         (q_sample of y at x''s level)
    x_{t-1} = x'' - A^+ (A x'' - y_s)                             (the projection onto A x = y_s)

At the last step abar_prev = 1: A x_0 = y exactly. A^+ is `operators.pinv.make_pinv` (the SVD
where the operator has one, else CG). For a mask the projection is (1 - m) x'' + m y_s, the
MCG paper's P^T y + (I - P^T P) x; for a blur A^+ divides y's noise by the small singular
values (the true projection amplifies the measurement noise: no deblurring in practice).

`official=True` reproduces DPS's repository exactly (parity only), two defects included:
- y is noised at the step's INPUT level, q_sample(y, t) with abar_t (the authors' MCG_diffusion
  code does the same), so the result's measured part carries sqrt(1 - abar_0) noise at the end;
- `LinearOperator.project(data, measurement)` returns `ortho_project(measurement) -
  forward(data)` = (I - A^T A) y_t - A x'' with the code's transpose (identity for inpainting
  and blurs): for inpainting (1 - m) y_t - m x'', which discards the sample (its holes become
  the noised measurement's holes, its known pixels -x''). Super-resolution overrides it with
  x'' - up(A x'') + up(y_t), up = nearest-neighbour upsampling (not A's adjoint). Other
  operators have no official projection (the DPS denoiser's `project(data)` raises) and are
  refused with official=True.

hparams (traced): scale. Two draws per step ({"z": the ancestral noise, "y": q_sample's noise
of y's shape}). The norm is per image (sample_condition.py runs batch 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.operators.pinv import make_pinv
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    ancestral,
    check_measurement,
    noise_kind,
    posterior_step,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)

BLURS = ("gaussian_blur", "motion_blur", "blur")  # the DPS code's transpose: the identity


def official_projection(operator):
    """`project(op_params, x, y_t)` as DPS's measurements.py computes it (module doc)."""
    name = getattr(operator, "name", type(operator).__name__)
    forward = operator.apply
    if getattr(operator, "pixel_mask", False) or name in BLURS:

        def project(op_params, x, y_t):  # LinearOperator.project, transpose = identity
            return (y_t - forward(op_params, y_t)) - forward(op_params, x)

        return project
    if name == "super_resolution":
        f = int(operator.factor)

        def up(v):  # F.interpolate(scale_factor=f), mode "nearest"
            return jnp.repeat(jnp.repeat(v, f, axis=0), f, axis=1)

        def project_sr(op_params, x, y_t):
            return x - up(forward(op_params, x)) + up(y_t)

        return project_sr
    raise ValueError(
        f"mcg: official=True reproduces the DPS code's projection for inpainting, blurs and "
        f"super_resolution; {name!r} has none there"
    )


@register_sampler(
    "mcg",
    needs=("operator", "linear", "measurement"),
    hparams={"scale": 1.0},
    ranges={"scale": "[0, 100]"},
    grad=True,
)
def make_mcg(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    official: bool = False,
    pinv: str = "auto",
    clip_denoised: bool = True,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"scale"}, replay=None, valid=True)`.

    official: the DPS code's projection and noise level (module doc). pinv: A^+'s method
    ("auto", "svd", "cg"). replay: {"x_T": (H,W,C), "noise": {"z": (K,H,W,C), "y": (K, *y)}};
    the trajectory records x_pre_guidance (x'), x_guided (x''), x0_hat, y_t and norm.
    """
    if noise_kind(noise) == "poisson":
        raise ValueError("mcg: the Poisson likelihood is not supported (Gaussian norm only)")
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "mcg")
    project = official_projection(operator) if official else None
    solve = None if official else make_pinv(operator, method=pinv)
    y_shape = tuple(operator.output_shape())
    steps = np.arange(schedule.num_steps)[::-1]

    def draw(key, x):
        kz, ky = jax.random.split(key)
        return {
            "z": jax.random.normal(kz, x.shape, x.dtype),
            "y": jax.random.normal(ky, y_shape, x.dtype),
        }

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # nothing couples the images
        h = resolve_hparams(defaults, hparams, "mcg")
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "mcg")
        y = jnp.asarray(y, dtype)
        scale = h["scale"].astype(dtype)
        x_T, k_loop = initial_x(key, replay, shape, dtype, "mcg")

        def step(x, k, z, state):
            def residual(x_in):
                pred = predict_x0(
                    model_fn, params, schedule, x_in, k, clip_denoised=clip_denoised, remat=remat
                )
                return y - forward(op_params, pred["x0"]), pred

            r, pullback, pred = jax.vjp(residual, x, has_aux=True)
            x_prime = ancestral(posterior_step(schedule, pred, x), k, z["z"])
            norm = jnp.sqrt(jnp.sum(r * r))
            (grad,) = pullback(r / jnp.where(norm > 0, norm, 1))  # no gradient where r = 0
            x_guided = x_prime - scale * grad
            c = pred["c"]
            if official:  # q_sample(y, t): the step's input level, float32 sqrt tables
                y_t = c["sqrt_alphas_cumprod"] * y + c["sqrt_one_minus_alphas_cumprod"] * z["y"]
                x_new = project(op_params, x_guided, y_t)
            else:
                a = c["alphas_cumprod_prev"]
                y_t = jnp.sqrt(a) * y + jnp.sqrt(1 - a) * z["y"]
                x_new = x_guided - solve(op_params, forward(op_params, x_guided) - y_t)
            record = {"x_pre_guidance": x_prime, "x_guided": x_guided, "x0_hat": pred["x0"],
                      "y_t": y_t, "norm": norm}  # fmt: skip
            return x_new.astype(dtype), state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="mcg",
                     draw=draw)  # fmt: skip

    return sample
