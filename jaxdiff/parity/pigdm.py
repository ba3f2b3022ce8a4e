"""Replay of the PiGDM trajectory fixtures (`pigdm_<task>_b<B>.npz` + `pigdm.json`).

The fixtures ran NVlabs/RED-diff algos/pgdm.py (commit 66482f23) on adm_tiny with the official
H_functions of utils/degredations.py, rebuilt from the stored pieces with their quirks
(`parity.operators.reddiff_operator`, RED-diff's pass-through pinv; "in2" runs with
`project_observed=True`). Schedule: the stored float32 alpha-bar table on PiGDM's grid
(`get_timesteps`: range(end_step, start_step, (start - end) // num_steps), checked against the
stored timesteps). Every draw is fed back (x_init_noise, one ddim_noise per step).

Rules (fixture README), per step k: |diff_k| <= 1e-4 + 3e-5 max|ref_k| for x_t, x0_pred and
x_init, 1e-4 + 2e-5 max|ref_k| for mat and grad_term, eps 2e-4, c1 / c2 / coeff / alphas rtol
1e-6 elementwise; each floored at 3x the official code's own float32-vs-float64 difference at
step k (pigdm.json runs.b<B>.f64_replay; deblurring's pinv divides by tiny singular values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import ddim_coefficients, make_schedule
from jaxdiff.parity.common import Fixture, f64_level, model_name, swap01
from jaxdiff.parity.operators import reddiff_operator
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("x_t",)
ATOL_STATE, RTOL_STATE = 1e-4, 3e-5  # x_t, x0_pred, x_init
ATOL_GUIDE, RTOL_GUIDE = 1e-4, 2e-5  # mat, grad_term
ATOL_EPS = 2e-4
RTOL_COEF = 1e-6


def reddiff_grid(fx: Fixture, name: str):
    """The schedule of a RED-diff-repo fixture (PiGDM, RED-diff): the stored float32 alpha-bar
    table on the method's `get_timesteps` grid; timesteps, prev_timesteps, alpha_t and alpha_s
    checked."""
    exp = fx.task["exp_cfg"]
    n_train = int(fx.task["diffusion_cfg"]["num_diffusion_timesteps"])
    if (int(exp["start_step"]), int(exp["end_step"])) != (n_train, 0):
        raise ValueError(f"{fx.path}: only start_step = T, end_step = 0 grids are supported")
    sched = make_schedule(
        alphas_cumprod=np.asarray(fx["alphas"][1:], np.float64),
        respacing=f"{name}{int(exp['num_steps'])}",
        variance_type="learned_range",  # adm_tiny learns sigma; only eps is used
    )
    ts = sched.timestep_map[::-1]
    fx.exact("timesteps", ts)
    fx.exact("prev_timesteps", np.concatenate([ts[1:], [-1]]))
    a_t = sched.tables["alphas_cumprod"][::-1].astype(np.float32)
    a_s = sched.tables["alphas_cumprod_prev"][::-1].astype(np.float32)
    fx.rel("alpha_t", a_t, RTOL_COEF)
    fx.rel("alpha_s", a_s, RTOL_COEF)
    for name in ("alphas_f64", "betas"):
        fx.skip(name, "the reference's float64 tables (the run uses the float32 alphas)")
    return sched, a_t, a_s


def measurement(fx: Fixture, op, op_params, sigma_y: float):
    """y_clean = H(x0), y = y_clean + 2 sigma_y y_noise ([0, 1] sigma on [-1, 1]) and the
    official H_pinv(y), checked; returns y."""
    xs = fx.jnp(fx.nhwc("x0"))
    fx.check("y_clean", jax.vmap(op.apply)(op_params, xs), 1e-5)
    if "y_noise" in fx:
        fx.check("y", fx.arrays["y_clean"] + fx["y_noise"] * sigma_y * 2, 1e-6)
    y = fx.jnp(fx["y"])
    # Deblurring's pinv divides by 2-D singulars down to ~1e-3: float32 rounding of ~1e-6
    # relative to max |pinv_y| (~11)
    fx.check("pinv_y", jax.vmap(op.svd.H_pinv)(op_params, y), 1e-5, 2e-6, nhwc=True)
    return y


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, "pigdm", dtype, trajectory=TRAJECTORY)
    task = fx.task
    algo = task["algo_cfg"]
    if algo.get("mcg") or algo.get("cond_awd"):
        raise ValueError(f"{fx.path}: mcg / cond_awd are not supported")
    x0 = fx.nhwc("x0")
    b, shape = x0.shape[0], x0.shape[1:]
    with fx.context():
        sched, a_t, a_s = reddiff_grid(fx, "pigdm")
        eta, weight = float(fx["eta"]), float(fx["grad_term_weight"])
        c1, c2 = (np.asarray(v) for v in ddim_coefficients(a_t, a_s, np.float32(eta)))
        coeff = np.sqrt(a_s) * np.sqrt(a_t) * np.float32(weight)
        for name, got in (("c1", c1), ("c2", c2), ("coeff", coeff)):
            fx.rel(name, got, RTOL_COEF)
        fx.skip("mat_x", "the scalar the official code differentiates (its gradient is compared)")
        op, op_params, project = reddiff_operator(fx, task["deg"], shape, b)
        if "singulars_used" in fx:
            fx.rel("singulars_used", op.svd.singulars(None), RTOL_COEF)
        y = measurement(fx, op, op_params, float(algo["sigma_y"]))
        name = model_name(fx.config.get("model", {}).get("file"), "adm_tiny")
        fn, params, _ = fx.model(name, model_dir)
        sample = get_sampler("pigdm")(
            fn, sched, operator=op, image_shape=shape, eta=eta, scale=weight,
            form="pinv",  # the code: H_pinv(y) - H_pinv(H(x0)), no sigma_y weighting
            project_observed=project, awd=bool(algo.get("awd", True)), dtype=fx.jdtype,
            keep_trajectory=True,
        )  # fmt: skip
        rep = {
            "x_T": fx.jnp(fx.nhwc("x_init_noise")),
            "noise": fx.jnp(swap01(fx.nhwc("ddim_noise"))),
        }
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(
            params, keys, y, jax.tree.map(jnp.asarray, op_params), None, rep
        )
        traj = jax.tree.map(np.asarray, res.trajectory)
    x_init = fx.arrays.get("x_init")
    if x_init is not None:
        fx.check("x_init", traj["x_in"][:, 0], ATOL_STATE, RTOL_STATE, nhwc=True)
    f64 = task.get("runs", {}).get(f"b{b}", {}).get("f64_replay", {})
    for ours, theirs, atol, rtol in (
        ("eps", "eps", ATOL_EPS, 0.0),
        ("x0_hat", "x0_pred", ATOL_STATE, RTOL_STATE),
        ("mat", "mat", ATOL_GUIDE, RTOL_GUIDE),
        ("grad_term", "grad_term", ATOL_GUIDE, RTOL_GUIDE),
        ("x", "x_t", ATOL_STATE, RTOL_STATE),
    ):
        fx.check(theirs, swap01(traj[ours]), atol, rtol, nhwc=True, per_step=True,
                 f64=f64_level(f64, theirs))  # fmt: skip
    return fx.report("pigdm", deg=task["deg"], batch=b)
