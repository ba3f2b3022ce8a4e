"""Replay of the DDNM / DDNM+ fixtures (`ddnm_<task>.npz` + `ddnm.json`; the fixture README).

Each file ran the official wyhuai/DDNM `ddnm_diffusion` (sigma_y = 0) or `ddnm_plus_diffusion`
on adm_tiny with the official A_functions (functions/svd_operators.py). The replay rebuilds those
operators from the stored bases (`jaxdiff.operators.official_svd`: interleaved inpainting,
SR x4, the tiled / truncated deblurring, denoising), runs `ddnm` or `ddnm_plus` with
`official=True` (DDNM+'s noise step without V^T for SR and deblurring; the deblurring Lambda
paired with the unthresholded singulars) on the stored x_T and per-step draws, and compares every
step: x_t (the recorded state), x0_t, x0_t_hat, et and, for DDNM+, pinv_res, Lambda_noise_out and
the lambda / d1 / d2 (deno: lambda_factor / noise_factor) tables. Operator probes, the schedule
(at, at_next) and the measurement (y = A x0 [+ sigma_y y_noise]) are checked too.

Tolerances (fixture README, float64 replay of the official code): x_t 1e-3 absolute (the
reference's own float32-vs-float64 difference is <= 2.7e-4); x0_t, x0_t_hat, pinv_res and the
noise term max(1e-4, 1e-5 * max(1, max|x_t|)) (deblurring 3e-5 * ..., its A_pinv divides by
small 2-D singulars), or 3x the reference's own float32-vs-float64 x0_t difference where that is
larger (x0_t amplifies eps's rounding by up to 61); et 1e-4; the coefficient tables 2e-6. A
float64 replay is held to 3x the reference's own float32-vs-float64 difference.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.operators import official_svd as off
from jaxdiff.parity.common import compare, model_anchor, nchw_to_nhwc, report, sidecar
from jaxdiff.parity.ddpm import load_model, run_dtype
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.ddnm import ddnm_plus_coefficients

ATOL_X = 1e-3
ATOL_EPS = 1e-4
ATOL_TABLE = 2e-6  # d1 near the threshold cancels: float32 rounding gives 1.3e-6 at d1 = 0.045


def build_svd(task: dict, npz, shape):
    """(official SVD form, op_params, lambda_singulars or None, checks) for the task's `deg`."""
    deg = task["deg"]
    checks = {}
    if deg == "inpainting":
        idx = off.inpainting_indices(npz["op_mask"])
        for k in ("kept_indices", "missing_indices"):
            checks[f"op_{k}"] = _exact(idx[k], npz[f"op_{k}"])
        params = {k: jnp.asarray(npz[f"op_{k}"], jnp.int32) for k in idx}
        svd = off.OfficialInpainting(shape, len(npz["op_kept_indices"]), interleaved=True)
        return svd, params, None, checks
    if deg.startswith("sr"):
        svd = off.OfficialSuperResolution(
            shape, int(npz["op_ratio"]), npz["op_U_small"], npz["op_V_small"],
            npz["op_singulars_small"],
        )  # fmt: skip
        return svd, {}, None, checks
    if deg.startswith("deblur"):
        svd = off.OfficialDeblurring(
            shape, npz["op_U_small"], npz["op_V_small"], npz["op_singulars_small"],
            npz["op_perm"], tiled=True, pinv_zero="zero",
        )  # fmt: skip
        orig = np.asarray(npz["op_singulars_small_orig"], np.float32)
        sorted_orig = np.outer(orig, orig).reshape(-1)[np.asarray(npz["op_perm"])]
        checks["op_singulars_orig_sorted"] = compare(
            sorted_orig, npz["op_singulars_orig_sorted"], atol=1e-7
        )
        # DDNM's Lambda / Lambda_noise: one unthresholded singular per sorted position, shared by
        # the 3 channels (spectral index p*3 + c), unlike A / A_pinv's tiled pairing.
        return svd, {}, np.repeat(sorted_orig, shape[-1]), checks
    if deg == "denoising":
        return off.OfficialDenoising(shape), {}, None, checks
    raise ValueError(f"ddnm fixture: unknown deg {deg!r}")


def _flat(a):
    """(..., H, W, C) images -> (..., C*H*W) channel-major, the official vectors."""
    a = np.moveaxis(np.asarray(a), -1, -3)
    return a.reshape(*a.shape[:-3], -1)


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    npz = dict(np.load(npz_path))
    cfg = sidecar(npz_path, "ddnm.json")
    m = re.fullmatch(r"ddnm_(.+)", npz_path.stem)
    task_name = m.group(1) if m else npz_path.stem
    if task_name not in cfg.get("tasks", {}):
        raise KeyError(f"{npz_path}: task {task_name!r} not in ddnm.json")
    task = cfg["tasks"][task_name]
    plus = task["function"] == "ddnm_plus_diffusion"
    n_steps = int(task["num_steps"])
    eta, sigma_y = float(npz["eta"]), float(npz["sigma_y"])
    x_T = nchw_to_nhwc(npz["x_T"])
    b, shape = x_T.shape[0], x_T.shape[1:]
    jdtype, ctx = run_dtype(dtype)
    arrays = {}
    with ctx, jax.default_matmul_precision("highest"):
        sched = make_schedule(
            int(cfg["diffusion"]["num_diffusion_timesteps"]),
            betas=np.asarray(npz["betas"], np.float64),
            variance_type="learned_range",
            respacing=f"skip{n_steps}",
        )
        t_ref = np.asarray(npz["t"]).astype(np.int64)
        arrays["timesteps"] = _exact(sched.timestep_map[::-1], t_ref)
        for name, table in (("at", "alphas_cumprod"), ("at_next", "alphas_cumprod_prev")):
            got = sched.tables[table][::-1].astype(np.float32)
            arrays[name] = compare(got, npz[name], atol=1e-6)
        svd, op_params, lam_s, checks = build_svd(task, npz, shape)
        arrays.update(checks)
        arrays.update(_probe_checks(svd, op_params, npz, shape, jdtype))
        op = off.OfficialOperator(svd, op_params)
        anchor = model_anchor(npz_path, "adm_tiny")
        fn, params, _ = load_model(anchor, model_dir, "adm_tiny", jdtype)
        options = {"official": True, "lambda_singulars": lam_s} if plus else {}
        hp = {"eta": eta, **({"sigma": sigma_y} if plus else {})}
        sample = get_sampler("ddnm_plus" if plus else "ddnm")(
            fn, sched, operator=op, image_shape=shape, dtype=jdtype, keep_trajectory=True,
            **hp, **options,
        )  # fmt: skip
        noise = np.swapaxes(nchw_to_nhwc(npz["noise"]), 0, 1)
        rep = {"x_T": jnp.asarray(x_T, jdtype), "noise": jnp.asarray(noise, jdtype)}
        keys = jax.random.split(jax.random.key(0), b)
        y = jnp.asarray(npz["y"], jdtype)
        res = jax.jit(batched(sample, shared_op_params=True))(params, keys, y, op_params, None, rep)
        traj = jax.tree.map(lambda a: np.swapaxes(np.asarray(a), 0, 1), res.trajectory)
        x0 = jnp.asarray(nchw_to_nhwc(npz["x0"]), jdtype)
        y_clean = np.asarray(jax.vmap(lambda x: svd.H(op_params, x))(x0))
        if plus:
            tables = _coefficient_tables(svd, op_params, lam_s, npz, eta, sigma_y, shape, jdtype)
    arrays["y_clean"] = compare(y_clean, npz["y_clean"], atol=1e-5)
    if "y_noise" in npz:
        y_rebuilt = npz["y_clean"] + sigma_y * npz["y_noise"].reshape(b, -1)
        arrays["y"] = compare(y_rebuilt, npz["y"], atol=1e-6)
    scale = max(1.0, float(np.abs(npz["x_t"]).max()))
    rtol = 3e-5 if task["deg"].startswith("deblur") else 1e-5
    f64 = task.get("f64_replay", {})
    # x0_t amplifies eps's float32 rounding by sqrt(1/a_t - 1) (61 at t = 900): where the
    # reference's own float32-vs-float64 x0_t difference is larger, 3x that difference.
    f64_x0 = max(f64.get("max_abs_diff_x0_t_per_step", [0]))
    atol_x, atol_x0 = ATOL_X, max(1e-4, rtol * scale, 3 * f64_x0)
    if dtype == "float64":
        atol_x = 3 * max(f64["max_abs_diff_x_t_per_step"])
        atol_x0 = 3 * max(f64["max_abs_diff_x0_t_per_step"])
    arrays["x_t"] = compare(traj["x"], nchw_to_nhwc(npz["x_t"]), atol_x, per_step=True)
    arrays["x0_t"] = compare(traj["x0"], nchw_to_nhwc(npz["x0_t"]), atol_x0, per_step=True)
    arrays["x0_t_hat"] = compare(
        traj["x0_hat"], nchw_to_nhwc(npz["x0_t_hat"]), atol_x0, per_step=True
    )
    arrays["et"] = compare(traj["eps"], nchw_to_nhwc(npz["et"]), ATOL_EPS, per_step=True)
    if plus:
        arrays["pinv_res"] = compare(
            _flat(traj["pinv_res"]), npz["pinv_res"], atol_x0, per_step=True
        )
        arrays["Lambda_noise_out"] = compare(
            _flat(traj["noise_term"]), npz["Lambda_noise_out"], atol_x0, per_step=True
        )
        arrays.update(tables)
    extra = {
        "dtype": dtype,
        "task": task_name,
        "sampler": "ddnm_plus" if plus else "ddnm",
        "batch": b,
        "eta": eta,
        "sigma_y": sigma_y,
        "reference_f64_replay_max_abs_diff_x_t": max(f64.get("max_abs_diff_x_t_per_step", [0])),
    }
    return report(npz_path, "ddnm", arrays, **extra)


def _probe_checks(svd, op_params, npz, shape, dtype) -> dict:
    """The official operator on the stored probes (relative to the reference's magnitude)."""
    if "probe_x" not in npz:
        return {}
    img = lambda v: jnp.asarray(off.from_flat(jnp.asarray(v[0]), shape), dtype)  # noqa: E731
    px, py = img(npz["probe_x"]), jnp.asarray(npz["probe_y"][0], dtype)
    got = {
        "A_probe_x": svd.H(op_params, px),
        "At_probe_y": off.to_flat(svd.Ht(op_params, py)),
        "Apinv_probe_y": off.to_flat(svd.H_pinv(op_params, py)),
        "Vt_probe_x": svd.Vt(op_params, px),
        "V_probe_x": off.to_flat(svd.V(op_params, jnp.asarray(npz["probe_x"][0], dtype))),
        "Ut_probe_y": svd.Ut(op_params, py),
        "U_probe_y": svd.U(op_params, py),
    }
    out = {}
    for name, value in got.items():
        if name in npz:
            want = npz[name][0]
            atol = 1e-5 * max(1.0, float(np.abs(want).max()))
            out[name] = compare(np.asarray(value), want, atol=atol)
    return out


def _coefficient_tables(svd, op_params, lam_s, npz, eta, sigma_y, shape, dtype) -> dict:
    """lambda / d1 / d2 per step from the sampler's own function, laid out as the fixture
    stores them (inpainting: every spectral entry; deblur: one per sorted position; SR: one per
    in-patch coefficient; denoising: the scalar factors, NaN where the official code had none)."""
    size = int(np.prod(shape))
    s = np.zeros(size, np.float32)
    if lam_s is not None:
        s[:] = lam_s
    else:
        sv = np.asarray(svd.singulars(op_params), np.float32)
        s[: sv.shape[0]] = sv
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0).astype(np.float32)
    at_next = jnp.asarray(npz["at_next"], dtype)
    lam, d1, d2 = jax.vmap(
        lambda an: ddnm_plus_coefficients(
            jnp.asarray(s, dtype), jnp.asarray(inv, dtype), jnp.sqrt(an),
            jnp.asarray(sigma_y, dtype), jnp.sqrt(1 - an), jnp.asarray(eta, dtype),
        )
    )(at_next)  # fmt: skip
    lam, d1, d2 = (np.asarray(a) for a in (lam, d1, d2))
    if "lambda_factor" in npz:  # denoising: scalars; NaN = the branch without a factor
        want_l, want_n = npz["lambda_factor"], npz["noise_factor"]
        got_l = np.where(np.isnan(want_l), np.nan, lam[:, 0])
        got_n = np.where(np.isnan(want_n), np.nan, d1[:, 0])
        return {
            "lambda_factor": _compare_nan(got_l, want_l),
            "noise_factor": _compare_nan(got_n, want_n),
        }
    L = npz["lambda_t"].shape[1]
    if L == size:
        pick = np.arange(size)
    elif L == size // shape[-1]:  # deblur: spectral index p*C + c, channel 0
        pick = np.arange(L) * shape[-1]
    else:  # SR: coefficient 0 of a patch, then coefficients 1.. of the first patch
        pick = np.concatenate([[0], svd.rank + np.arange(L - 1)])
    return {
        "lambda_t": compare(lam[:, pick], npz["lambda_t"], ATOL_TABLE),
        "d1_t": compare(d1[:, pick], npz["d1_t"], ATOL_TABLE),
        "d2_t": compare(d2[:, pick], npz["d2_t"], ATOL_TABLE),
    }


def _compare_nan(got, want) -> dict:
    same_nan = bool(np.all(np.isnan(got) == np.isnan(want)))
    ok = ~np.isnan(want)
    out = compare(got[ok], want[ok], ATOL_TABLE)
    out["pass"] = out["pass"] and same_nan
    return out


def _exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    return {"pass": ok, "got": got.tolist()[:8], "want": want.tolist()[:8]}
