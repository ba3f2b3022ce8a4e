"""Replay of the DDNM / DDNM+ fixtures (`ddnm_<task>.npz` + `ddnm.json`; the fixture README).

Each file ran the official wyhuai/DDNM `ddnm_diffusion` (sigma_y = 0) or `ddnm_plus_diffusion`
on adm_tiny with the official A_functions (functions/svd_operators.py). The replay rebuilds those
operators from the stored bases (`jaxdiff.operators.official_svd`: interleaved inpainting,
SR x4, the tiled / truncated deblurring, denoising), runs `ddnm` or `ddnm_plus` with
`official=True` on DDNM's own time grid for the sidecar's time_travel.T_sampling
(`get_schedule_jump`, checked against the stored t / t_next), feeds x_T and every per-step draw
back and compares every step: x_t, x0_t, x0_t_hat, et and, for DDNM+, pinv_res,
Lambda_noise_out and the lambda / d1 / d2 (deno: lambda_factor / noise_factor) tables, plus
operator probes, the schedule and the measurement.

Rules (fixture README): x_t, x0_t, x0_t_hat (and pinv_res, the noise term) |diff| <= 1e-5 *
max(1, max|x_t|) (deblurring 3e-5: its A_pinv divides by small 2-D singulars; deno atol 1e-4),
floored at 3x the official code's own float32-vs-float64 difference (ddnm.json f64_replay);
et 1e-4; the coefficient tables 2e-6 (d1 near the threshold cancels: float32 rounding gives
1.3e-6 at d1 = 0.045); probes 1e-5 * max(1, max|ref|).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.diffusion.time_grids import ddnm_walk
from jaxdiff.operators import official_svd as off
from jaxdiff.parity.common import Fixture, f64_level, f64_max, swap01
from jaxdiff.parity.operators import index_sets, svd_probes
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.ddnm import ddnm_plus_coefficients

TRAJECTORY = ("x_t",)
ATOL_EPS, ATOL_DENO = 1e-4, 1e-4
ATOL_TABLE = 2e-6


def build_svd(task: dict, fx: Fixture, shape):
    """(official SVD form, op_params, lambda_singulars or None) for the task's `deg`."""
    deg = task["deg"]
    if deg in ("inpainting", "inp_random"):  # the kept indices are stored either way
        params = index_sets(fx, shape, "op_")
        svd = off.OfficialInpainting(shape, len(fx["op_kept_indices"]), interleaved=True)
        return svd, params, None
    if deg.startswith("sr"):
        svd = off.OfficialSuperResolution(
            shape, int(fx["op_ratio"]), fx["op_U_small"], fx["op_V_small"],
            fx["op_singulars_small"],
        )  # fmt: skip
        return svd, {}, None
    if deg.startswith("deblur"):
        svd = off.OfficialDeblurring(
            shape, fx["op_U_small"], fx["op_V_small"], fx["op_singulars_small"],
            fx["op_perm"], tiled=True, pinv_zero="zero",
        )  # fmt: skip
        orig = np.asarray(fx["op_singulars_small_orig"], np.float32)
        sorted_orig = np.outer(orig, orig).reshape(-1)[np.asarray(fx["op_perm"])]
        fx.check("op_singulars_orig_sorted", sorted_orig, 1e-7)
        if "op_kernel" in fx:
            fx.check("op_A_small", off.official_blur_matrix(fx["op_kernel"], shape[0]), 1e-7)
        # DDNM's Lambda / Lambda_noise: one unthresholded singular per sorted position, shared by
        # the 3 channels (spectral index p*3 + c), unlike A / A_pinv's tiled pairing.
        return svd, {}, np.repeat(sorted_orig, shape[-1])
    if deg == "denoising":
        return off.OfficialDenoising(shape), {}, None
    if deg == "colorization":  # torch.svd's basis of the grey row, as stored
        pieces = [fx[f"op_{k}"] for k in ("U_small", "V_small", "singulars_small")]
        return off.OfficialColorization(shape, *pieces), {}, None
    raise ValueError(f"ddnm fixture: unknown deg {deg!r}")


def _flat(a):
    """(..., H, W, C) images -> (..., C*H*W) channel-major, the official vectors."""
    a = np.moveaxis(np.asarray(a), -1, -3)
    return a.reshape(*a.shape[:-3], -1)


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, "ddnm", dtype, trajectory=TRAJECTORY)
    cfg, task = fx.config, fx.task
    plus = task["function"] == "ddnm_plus_diffusion"
    travel = cfg.get("time_travel", {})
    n_steps = int(travel.get("T_sampling", task.get("num_steps")))
    n_train = int(cfg["diffusion"]["num_diffusion_timesteps"])
    tt = {k: int(travel.get(k, 1)) for k in ("travel_length", "travel_repeat")}
    walk = ddnm_walk(n_steps, n_train, tt["travel_length"], tt["travel_repeat"])
    up = np.array([j > i for i, j in walk])  # time-travel pairs: no model call, NaN rows
    sigma_y = float(fx["sigma_y"])
    x_T = fx.nhwc("x_T")
    b, shape = x_T.shape[0], x_T.shape[1:]
    with fx.context():
        sched = make_schedule(
            n_train,
            betas=np.asarray(fx["betas"], np.float64),
            variance_type="learned_range",
            respacing=f"ddnm{n_steps}",
        )
        fx.exact("t", [i for i, _ in walk])
        fx.exact("t_next", [j for _, j in walk])
        fx.exact("travel", up)
        abar = dict(zip(sched.timestep_map, sched.tables["alphas_cumprod"]))
        abar[-1] = 1.0
        at = np.where(up, np.nan, [abar[i] for i, _ in walk]).astype(np.float32)
        at_next = np.array([abar[j] for _, j in walk], np.float32)
        fx.check("at", at, 1e-6)
        fx.check("at_next", at_next, 1e-6)
        sigma_t = np.where(up, np.nan, np.sqrt(1 - at_next.astype(np.float64)))
        fx.check("sigma_t", sigma_t, 1e-6)
        eta = float(fx["eta"])
        fx.check("c1", sigma_t * eta, 1e-6)  # the DDIM noise / eps weights of ddnm_diffusion
        fx.check("c2", sigma_t * np.sqrt(1 - eta**2), 1e-6)
        svd, op_params, lam_s = build_svd(task, fx, shape)
        svd_probes(fx, svd, op_params, shape)
        fx.check("singulars", svd.singulars(op_params), rtol=1e-6)
        op = off.OfficialOperator(svd, op_params)
        fn, params, _ = fx.model("adm_tiny", model_dir)
        options = {"official": True, "lambda_singulars": lam_s} if plus else {}
        options.update(tt if tt["travel_repeat"] > 1 else {})
        hp = {"eta": eta, **({"sigma": sigma_y} if plus else {})}
        sample = get_sampler("ddnm_plus" if plus else "ddnm")(
            fn, sched, operator=op, image_shape=shape, dtype=fx.jdtype, keep_trajectory=True,
            **hp, **options,
        )  # fmt: skip
        noise = swap01(fx.nhwc("noise"))
        rep = {"x_T": fx.jnp(x_T), "noise": fx.jnp(noise)}
        keys = jax.random.split(jax.random.key(0), b)
        y = fx.jnp(fx["y"])
        res = jax.jit(batched(sample, shared_op_params=True))(params, keys, y, op_params, None, rep)
        traj = jax.tree.map(swap01, res.trajectory)
        x0 = fx.jnp(fx.nhwc("x0"))
        y_clean = np.asarray(jax.vmap(lambda x: svd.H(op_params, x))(x0))
        if plus:
            # on the official float32 at_next (checked above): d1 cancels near its threshold
            a_next = fx.arrays.get("at_next", at_next)
            _coefficient_tables(fx, svd, op_params, lam_s, eta, sigma_y, shape, a_next, up)
    small = lambda name: max(1.0, float(np.abs(fx.arrays.get(name, 0)).max()))  # noqa: E731
    fx.check("y_clean", y_clean, rtol=1e-5, scale=small("y_clean"))
    if {"y_clean", "y_noise"} <= set(fx.arrays):
        y_rebuilt = fx.arrays["y_clean"] + sigma_y * fx["y_noise"].reshape(b, -1)
        fx.check("y", y_rebuilt, rtol=1e-5, scale=small("y"))
    deblur = task["deg"].startswith("deblur")
    f64 = task.get("f64_replay", {})
    lvl_x, lvl_x0 = f64_level(f64, "x_t"), f64_level(f64, "x0_t")
    if dtype == "float64":  # against the float32 reference: its own float32 noise, 3x (whole run)
        rule = {"atol": 0.0, "rtol": 0.0}
        lvl_x, lvl_x0 = f64_max(lvl_x), f64_max(lvl_x0)
    elif task["deg"] == "denoising":
        rule = {"atol": ATOL_DENO, "rtol": 0.0}
    else:
        rule = {"atol": 0.0, "rtol": 3e-5 if deblur else 1e-5, "scale": small("x_t")}
    fx.skip("Apy", "a picture only (README): deblurring stores y itself, inpainting adds ones")
    fx.check("x_t", traj["x"], **rule, nhwc=True, per_step=True, f64=lvl_x)
    fx.check("x0_t", traj["x0"], **rule, nhwc=True, per_step=True, f64=lvl_x0)
    fx.check("x0_t_hat", traj["x0_hat"], **rule, nhwc=True, per_step=True, f64=lvl_x0)
    fx.check("et", traj["eps"], ATOL_EPS, nhwc=True, per_step=True)
    if plus:
        fx.check("pinv_res", _flat(traj["pinv_res"]), **rule, per_step=True, f64=lvl_x0)
        fx.check("Lambda_noise_out", _flat(traj["noise_term"]), **rule, per_step=True, f64=lvl_x0)
    return fx.report(
        "ddnm", sampler="ddnm_plus" if plus else "ddnm", batch=b, eta=eta, sigma_y=sigma_y,
        steps=n_steps, reference_f64_replay_max_abs_diff_x_t=f64_max(lvl_x),
    )  # fmt: skip


def _coefficient_tables(fx: Fixture, svd, op_params, lam_s, eta, sigma_y, shape, at_next, up):
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
    at_next, dt = fx.jnp(at_next), fx.jdtype
    lam, d1, d2 = jax.vmap(
        lambda an: ddnm_plus_coefficients(
            jnp.asarray(s, dt), jnp.asarray(inv, dt), jnp.sqrt(an),
            jnp.asarray(sigma_y, dt), jnp.sqrt(1 - an), jnp.asarray(eta, dt),
        )
    )(at_next)  # fmt: skip
    # NaN rows: the time-travel pairs, which compute no coefficients
    lam, d1, d2 = (np.where(up[:, None], np.nan, np.asarray(a)) for a in (lam, d1, d2))
    if "lambda_factor" in fx:  # denoising: scalars; NaN = the branch without a factor
        for name, got in (("lambda_factor", lam[:, 0]), ("noise_factor", d1[:, 0])):
            want = fx.arrays[name]
            got = np.where(np.isnan(want), np.nan, got)
            ok = ~np.isnan(want)
            out = fx.check(name, got[ok], ATOL_TABLE, ref=want[ok])
            fx.compared.add(name)
            out["pass"] = out["pass"] and bool(np.all(np.isnan(got) == np.isnan(want)))
        return
    if "lambda_t" not in fx:
        return
    L = fx.arrays["lambda_t"].shape[1]
    if L == size:
        pick = np.arange(size)
    elif L == size // shape[-1]:  # deblur: spectral index p*C + c, channel 0
        pick = np.arange(L) * shape[-1]
    else:  # SR: coefficient 0 of a patch, then coefficients 1.. of the first patch
        pick = np.concatenate([[0], svd.rank + np.arange(L - 1)])
    for name, got in (("lambda_t", lam), ("d1_t", d1), ("d2_t", d2)):
        fx.check(name, got[:, pick], ATOL_TABLE)
