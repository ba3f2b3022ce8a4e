"""DiffPIR, diffusion plug-and-play image restoration (Zhu et al., CVPRW 2023; the official
yuanzhi-zhu/DiffPIR main_ddpir_{deblur,sisr,inpainting}.py loop, docs/methods.md).

On the scripts' own grid (jaxdiff/diffusion/diffpir_schedule.py: t_i, t_im1 from 'quad' or
'uniform' noise levels; sqrt_ac, sqrt_1m from float32 betas), for every step but the last:

    x0     = clamp(x0(x_t, eps_theta(x_t, t_i)))          (guided-diffusion coefficients at t_i)
    rho    = lambda (sigma / 2)^2 / sigma_bar_{t_i}^2     (sigma: y's noise std in [-1, 1] units,
                                                           floor 0.002; sigma_bar = sqrt_1m/sqrt_ac)
    x0_p   = argmin_v ||y - A v||^2 + rho ||v - x0||^2    (jaxdiff/operators/proximal.py)
    x0    <- x0 + guidance_scale (x0_p - x0)
    eps    = (x_t - sqrt_ac[t_i] x0) / sqrt_1m[t_i]
    x_next = sqrt_ac[t_im1] x0 + sqrt(1 - zeta) (c eps + s z1) + sqrt(zeta) sqrt_1m[t_im1] z2
             s = eta sqrt_1m[t_im1] / sqrt_1m[t_i] sqrt(beta[t_i]), c = sqrt(sqrt_1m[t_im1]^2 - s^2)

The scripts' last iteration (t_i = 0) calls the network and throws the result away (x is not
replaced by x0), so the sample is x after the second-to-last update; it is skipped here (the
same output, one network call fewer). x_T follows the scripts (`init`): "measurement" (deblur,
inpainting: y seen as x at its own noise level t_y, diffused to t_start), "guide" (SR: an
upsampled y diffused to t_start) or "noise" (x_T ~ N(0, I)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.diffpir_schedule import make_grid, time_grid
from jaxdiff.diffusion.schedule import respace
from jaxdiff.operators.proximal import data_prox
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    check_measurement,
    make_guide,
    noise_sigma,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)

INITS = ("measurement", "guide", "noise")
SIGMA_FLOOR = 0.002  # the scripts' sigma = max(0.001, noise_level_img), in [0, 1] units


def _nfe(num_steps: int, options: dict) -> int:
    n = int(options.get("iter_num") or num_steps)
    seq = time_grid(
        int(options.get("num_train_timesteps", 1000)), n, options.get("skip_type", "quad")
    )
    # the scripts' last, discarded, network call is skipped
    return (len(seq) - 1) * int(options.get("iter_num_U", 1))


def rho_of(row, lam, sigma):
    """rho_t = lambda sigma_01^2 / sigma_bar_t^2 as the scripts' float32 reciprocal-times-scalar
    (sigma_01 = max(sigma, 0.002) / 2, the [0, 1]-units noise level the scripts use)."""
    s01 = jnp.maximum(sigma, SIGMA_FLOOR) * 0.5
    return row["inv_sigma_k2"] * (lam * (s01 * s01))


def update(row, x, x0, z_eta, z_zeta, zeta, eta):
    """The DiffPIR re-noising step from x0 (effective) to t_im1, in the scripts' order."""
    eps = (x - row["sqrt_ac"] * x0) / row["sqrt_1m"]
    eta_sigma = eta * row["sqrt_1m_next"] / row["sqrt_1m"] * row["sqrt_beta"]
    c_eps = jnp.sqrt(row["sqrt_1m_next"] ** 2 - eta_sigma**2)
    a = row["sqrt_ac_next"] * x0 + jnp.sqrt(1 - zeta) * (c_eps * eps + eta_sigma * z_eta)
    return a + (jnp.sqrt(zeta) * row["sqrt_1m_next"]) * z_zeta


def initial_state(grid, init: str, n0, guide_img, sigma):
    """x_T from the standard normal n0 (the scripts' step (3) "initialize x")."""
    tb = grid.tables
    sa = jnp.asarray(tb["sqrt_alphas_cumprod"], n0.dtype)
    s1 = jnp.asarray(tb["sqrt_1m_alphas_cumprod"], n0.dtype)
    t_start = int(grid.t_i[0])
    if init == "noise":
        return n0
    if init == "guide":
        return sa[t_start] * guide_img + s1[t_start] * n0
    reduced = jnp.asarray(tb["reduced_alpha_cumprod"], n0.dtype)
    t_y = jnp.argmin(jnp.abs(reduced - jnp.asarray(sigma, n0.dtype)))
    s = sa[t_start] / sa[t_y]
    return s * guide_img + jnp.sqrt(s1[t_start] ** 2 - s**2 * s1[t_y] ** 2) * n0


def renoise(row, x, z):
    """The scripts' `iter_num_U` repeat: x at t_im1 diffused back to t_i."""
    s = row["sqrt_ac"] / row["sqrt_ac_next"]
    return s * x + jnp.sqrt(row["sqrt_1m"] ** 2 - s**2 * row["sqrt_1m_next"] ** 2) * z


def _drawer(repeats: int):
    names = ("eta", "zeta") if repeats == 1 else ("eta", "zeta", "renoise")
    lead = () if repeats == 1 else (repeats,)

    def draw(key, x):
        keys = jax.random.split(key, len(names))
        return {n: jax.random.normal(k, lead + x.shape, x.dtype) for n, k in zip(names, keys)}

    return draw


@register_sampler(
    "diffpir",
    needs=("operator", "linear", "measurement"),
    hparams={"lambda_": 1.0, "zeta": 0.1, "eta": 0.0, "guidance_scale": 1.0, "sigma": None},
    ranges={
        "lambda_": "(0, 100]",
        "zeta": "[0, 1]",
        "eta": "[0, 1]",
        "guidance_scale": "[0, 100]",
        "sigma": "[0, 2]",
    },
    nfe=_nfe,
)
def make_diffpir(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    iter_num: int | None = None,
    skip_type: str = "quad",
    t_start: int | None = None,
    init: str = "measurement",
    guide=None,
    unit_interval: bool = False,
    cg_iters: int = 50,
    prox_form: str = "stable",
    iter_num_U: int = 1,
    clip_denoised: bool = True,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={lambda_, zeta, eta, guidance_scale, sigma})`.

    iter_num: grid size (default: the schedule's number of steps); skip_type 'quad' | 'uniform'.
    unit_interval: solve the data step on x/2 + 1/2 and y/2 + 1/2 as the deblur / SR scripts do
    (identical when A maps constants to constants). sigma defaults to the noise model's std.
    iter_num_U: the scripts' inner repeats (RePaint-style): after each update but the last, x is
    diffused back from t_im1 to t_i and the step is redone.
    replay: {"x_T_noise": (H,W,C), "noise": {"eta": (K,H,W,C), "zeta": (K,H,W,C)}}, K = steps - 1
    (with iter_num_U = U > 1: eta, zeta and renoise of shape (K,U,H,W,C); the last renoise unused).
    The trajectory records x0 (the network's), x0_prox and rho per step (its last repeat).
    """
    if int(iter_num_U) < 1:
        raise ValueError(f"diffpir: iter_num_U must be >= 1, got {iter_num_U!r}")
    repeats = int(iter_num_U)
    if init not in INITS:
        raise ValueError(f"diffpir: init must be one of {INITS}, got {init!r}")
    prox, prox_kind = data_prox(operator, cg_iters=cg_iters, form=prox_form)
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "diffpir")
    n = int(iter_num or schedule.num_steps)
    full = respace(schedule.train_alphas_cumprod, None, schedule.variance_type, schedule.convention)
    tables_dtype = "float64" if jnp.dtype(dtype) == jnp.float64 else "float32"
    grid = make_grid(schedule.train_alphas_cumprod, n, skip_type, t_start, tables_dtype)
    rows_np = {k: v[:-1] for k, v in grid.per_step.items()}
    steps = np.arange(grid.num_steps - 1)
    guide_fn = make_guide(guide, shape, "diffpir")
    defaults = dict(defaults)
    if defaults.get("sigma") is None:
        defaults["sigma"] = noise_sigma(noise)

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "diffpir")
        h = {k: v.astype(dtype) for k, v in h.items()}
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "diffpir")
        n0, k_loop = initial_x(key, replay, shape, dtype, "diffpir", name="x_T_noise")
        g = guide_fn(op_params, y) if init != "noise" else None
        x_T = initial_state(grid, init, n0, g, h["sigma"])
        rows = {
            k: jnp.asarray(v.astype(np.dtype(dtype)) if v.dtype.kind == "f" else v)
            for k, v in rows_np.items()
        }
        y_data = y * 0.5 + 0.5 if unit_interval else y

        def one(row, x, z):
            pred = predict_x0(model_fn, params, full, x, row["t"], clip_denoised=clip_denoised)
            x0 = pred["x0"]
            rho = rho_of(row, h["lambda_"], h["sigma"])
            if unit_interval:
                x0_p = prox(op_params, y_data, x0 * 0.5 + 0.5, rho) * 2 - 1
            else:
                x0_p = prox(op_params, y_data, x0, rho)
            x0_eff = x0 + h["guidance_scale"] * (x0_p - x0)
            x_next = update(row, x, x0_eff, z["eta"], z["zeta"], h["zeta"], h["eta"])
            record = {"x0": x0, "eps": pred["eps"], "x0_prox": x0_p, "rho": rho}
            return x_next, record

        def step(x, k, z, state):
            row = {name: v[k] for name, v in rows.items()}
            if repeats == 1:
                x_next, record = one(row, x, z)
                return x_next, state, record

            def inner(xu, zu):
                x_next, record = one(row, xu, zu)
                return renoise(row, x_next, zu["renoise"]), (x_next, record)

            _, (xs, records) = jax.lax.scan(inner, x, z)
            return xs[-1], state, jax.tree.map(lambda a: a[-1], records)

        return chain(
            step,
            x_T,
            steps,
            key=k_loop,
            replay=replay,
            loop=loop,
            label="diffpir",
            draw=_drawer(repeats),
        )

    sample.grid = grid
    sample.prox_kind = prox_kind
    return sample
