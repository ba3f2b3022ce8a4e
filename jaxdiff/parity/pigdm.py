"""Replay of the PiGDM trajectory fixtures (`pigdm_<task>_b<B>.npz` + `pigdm.json`).

The fixtures ran NVlabs/RED-diff algos/pgdm.py (commit 66482f23) on adm_tiny with the official
H_functions of utils/degredations.py, so the replay takes the operators with their quirks from
jaxdiff.operators.official_svd, built from the stored pieces (masks, kept indices, the Deblurring
U/V/perm, the SR V), with RED-diff's pass-through pinv; "in2" runs with `project_observed=True`
(the code's in2 branch). Schedule: the stored float32 alpha-bar table, respaced "skipN" =
range(0, T, T // N). Every draw is fed back (x_init_noise, one ddim_noise per step); the
measurement y is the stored one (its rebuild y_clean + 2 sigma_y y_noise is checked).

Tolerances (fixture README, float32 vs float64 replay of the official code): per step k,
|diff_k| <= 1e-4 + 3e-5 max|ref_k| for x_t, x0_pred and x_init, 1e-4 + 2e-5 max|ref_k| for mat
and grad_term, eps 2e-4, c1 / c2 / coeff / alphas rtol 1e-6; where the README's own float32-vs-
float64 replay of the official code differs by more at step k (deblurring's mat / grad_term: its
pinv divides by tiny singular values), 3x that difference.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import ddim_coefficients, make_schedule
from jaxdiff.operators import official_svd as osvd
from jaxdiff.parity.common import compare, model_anchor, nchw_to_nhwc, report, sidecar
from jaxdiff.parity.ddpm import load_model, run_dtype
from jaxdiff.samplers import batched, get_sampler

ATOL_STATE, RTOL_STATE = 1e-4, 3e-5  # x_t, x0_pred, x_init
ATOL_GUIDE, RTOL_GUIDE = 1e-4, 2e-5  # mat, grad_term
ATOL_EPS = 2e-4
RTOL_COEF = 1e-6
ATOL_Y = 1e-5


def compare_scaled(got, want, atol: float, rtol: float, f64_diff=None) -> dict:
    """Per leading-axis slice k: max |got - want| <= atol + rtol * max |want_k|, or, where larger,
    3x the reference's own float32-vs-float64 difference at step k (`f64_diff`, pigdm.json)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return {"pass": False, "error": f"shape {got.shape} != reference {want.shape}"}
    err = np.abs(got - want).reshape(got.shape[0], -1).max(axis=1)
    tol = atol + rtol * np.abs(want).reshape(want.shape[0], -1).max(axis=1)
    if f64_diff is not None:
        tol = np.maximum(tol, 3.0 * np.asarray(f64_diff, np.float64))
    return {
        "max_abs_err": float(err.max()),
        "max_ratio_to_tol": float((err / tol).max()),
        "atol": atol,
        "rtol_of_max": rtol,
        "pass": bool(np.all(np.isfinite(err)) and np.all(err <= tol)),
        "per_step_max_abs_err": [float(e) for e in err],
        "per_step_tol": [float(t) for t in tol],
    }


def _rel(got, want, rtol: float) -> dict:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
    ok = got.shape == want.shape and bool(np.all((rel <= rtol) | (got == want)))
    return {"pass": ok, "max_rel_err": float(rel.max()), "rtol": rtol}


def build_operator(deg: str, npz: dict, shape):
    """The official H_function of `deg` from the stored arrays; (operator, batched op_params or
    None when shared, project_observed)."""
    if deg.startswith("in2"):
        svd = osvd.OfficialMaskedInpainting(shape)
        mask = nchw_to_nhwc(npz["mask"]).astype(np.float32)
        return osvd.OfficialOperator(svd), {"mask": jnp.asarray(mask)}, True
    if deg.startswith("inp"):
        kept, missing = npz["kept_indices"], npz["missing_indices"]
        svd = osvd.OfficialInpainting(shape, kept.shape[1], interleaved=False, pinv_zero="pass")
        op_params = {
            "kept_indices": jnp.asarray(kept, jnp.int32),
            "missing_indices": jnp.asarray(missing, jnp.int32),
        }
        return osvd.OfficialOperator(svd), op_params, False
    if deg.startswith("deblur"):
        svd = osvd.OfficialDeblurring(
            shape,
            npz["U_small"],
            npz["V_small"],
            npz["singulars_small"],
            npz["perm"],
            tiled=True,
            pinv_zero="pass",
        )
        return osvd.OfficialOperator(svd), {}, False
    m = re.fullmatch(r"sr(\d+)", deg)
    if m:
        svd = osvd.OfficialSuperResolution(
            shape,
            int(m.group(1)),
            npz["U_small"],
            npz["V_small"],
            npz["singulars_small"],
            pinv_zero="pass",
        )
        return osvd.OfficialOperator(svd), {}, False
    raise ValueError(f"pigdm replay: degradation {deg!r} has no official operator here")


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    npz = dict(np.load(npz_path))
    cfg = sidecar(npz_path, "pigdm.json")
    m = re.fullmatch(r"pigdm_(.+)_b\d+", npz_path.stem)
    task_name = m.group(1) if m else npz_path.stem
    if task_name not in cfg.get("tasks", {}):
        raise KeyError(f"{npz_path}: task {task_name!r} not in pigdm.json")
    task = cfg["tasks"][task_name]
    algo, exp = task["algo_cfg"], task["exp_cfg"]
    if algo.get("mcg") or algo.get("cond_awd"):
        raise ValueError(f"{npz_path}: mcg / cond_awd are not supported")
    n_train = int(task["diffusion_cfg"]["num_diffusion_timesteps"])
    if (exp["start_step"], exp["end_step"]) != (n_train, 0):
        raise ValueError(f"{npz_path}: only start_step = T, end_step = 0 grids are supported")
    respacing = f"skip{int(exp['num_steps'])}"
    jdtype, ctx = run_dtype(dtype)
    x0 = nchw_to_nhwc(npz["x0"])
    b, shape = x0.shape[0], x0.shape[1:]
    arrays = {}
    with ctx, jax.default_matmul_precision("highest"):
        sched = make_schedule(
            alphas_cumprod=npz["alphas"][1:].astype(np.float64),
            respacing=respacing,
            variance_type="learned_range",  # adm_tiny learns sigma; only eps is used
        )
        arrays["timesteps"] = _exact(sched.timestep_map[::-1], npz["timesteps"])
        a_t = np.asarray(sched.tables["alphas_cumprod"][::-1].astype(np.float32))
        a_s = np.asarray(sched.tables["alphas_cumprod_prev"][::-1].astype(np.float32))
        arrays["alpha_t"] = _rel(a_t, npz["alpha_t"], RTOL_COEF)
        arrays["alpha_s"] = _rel(a_s, npz["alpha_s"], RTOL_COEF)
        eta, weight = float(npz["eta"]), float(npz["grad_term_weight"])
        c1, c2 = (np.asarray(v) for v in ddim_coefficients(a_t, a_s, np.float32(eta)))
        coeff = np.sqrt(a_s) * np.sqrt(a_t) * np.float32(weight)
        for name, got in (("c1", c1), ("c2", c2), ("coeff", coeff)):
            arrays[name] = _rel(got, npz[name], RTOL_COEF)

        op, op_params, project = build_operator(task["deg"], npz, shape)
        if task["deg"].startswith("deblur"):
            arrays["singulars_used"] = _rel(
                op.svd.singulars(None), npz["singulars_used"], RTOL_COEF
            )
        xs = jnp.asarray(x0, jdtype)
        y_clean = jax.vmap(op.apply)(op_params, xs)
        arrays["y_clean"] = compare(y_clean, npz["y_clean"], ATOL_Y)
        sigma_y = float(algo["sigma_y"])
        arrays["y"] = compare(npz["y_clean"] + npz["y_noise"] * sigma_y * 2, npz["y"], 1e-6)
        y = jnp.asarray(npz["y"], jdtype)
        pinv_y = jax.vmap(op.svd.H_pinv)(op_params, y)
        # Deblurring's pinv divides by 2-D singulars down to ~1e-3: float32 rounding of ~1e-6
        # relative to max |pinv_y| (~11)
        arrays["pinv_y"] = compare_scaled(pinv_y, nchw_to_nhwc(npz["pinv_y"]), ATOL_Y, 2e-6)

        name = re.match(r"\s*([\w.-]+?)(\.pt)?\b", cfg.get("model", {}).get("file", "adm_tiny"))
        name = name.group(1) if name else "adm_tiny"
        fn, params, _ = load_model(model_anchor(npz_path, name), model_dir, name, jdtype)
        sample = get_sampler("pigdm")(
            fn,
            sched,
            operator=op,
            image_shape=shape,
            eta=eta,
            scale=weight,
            form="pinv",  # the code: H_pinv(y) - H_pinv(H(x0)), no sigma_y weighting
            project_observed=project,
            awd=bool(algo.get("awd", True)),
            dtype=jdtype,
            keep_trajectory=True,
        )
        rep = {
            "x_T": jnp.asarray(nchw_to_nhwc(npz["x_init_noise"]), jdtype),
            "noise": jnp.asarray(np.swapaxes(nchw_to_nhwc(npz["ddim_noise"]), 0, 1), jdtype),
        }
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(params, keys, y, op_params, None, rep)
        traj = jax.tree.map(np.asarray, res.trajectory)

    def sw(a):  # (B, K, ...) -> (K, B, ...)
        return np.swapaxes(a, 0, 1)

    arrays["x_init"] = compare_scaled(
        traj["x_in"][:, :1], nchw_to_nhwc(npz["x_init"])[:, None], ATOL_STATE, RTOL_STATE
    )
    f64 = task.get("runs", {}).get(f"b{b}", {}).get("f64_replay", {})
    for ours, theirs, atol, rtol in (
        ("eps", "eps", ATOL_EPS, 0.0),
        ("x0_hat", "x0_pred", ATOL_STATE, RTOL_STATE),
        ("mat", "mat", ATOL_GUIDE, RTOL_GUIDE),
        ("grad_term", "grad_term", ATOL_GUIDE, RTOL_GUIDE),
        ("x", "x_t", ATOL_STATE, RTOL_STATE),
    ):
        f64_diff = f64.get(f"max_abs_diff_{theirs}_per_step")
        arrays[theirs] = compare_scaled(
            sw(traj[ours]), nchw_to_nhwc(npz[theirs]), atol, rtol, f64_diff
        )
    arrays["x_t_final"] = compare_scaled(
        np.asarray(res.x0)[None], nchw_to_nhwc(npz["x_t"][-1:]), ATOL_STATE, RTOL_STATE
    )
    extra = {"dtype": dtype, "task": task_name, "deg": task["deg"], "batch": b}
    return report(npz_path, "pigdm", arrays, **extra)


def _exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    return {"pass": ok, "got": got.tolist()[:10], "want": want.tolist()[:10]}
