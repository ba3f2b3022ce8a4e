"""Replay of the DDRM trajectory fixtures (`ddrm_<task>.npz` + `ddrm.json`).

The fixtures ran bahjat-kawar/ddrm's `efficient_generalized_steps` (functions/denoising.py) on
adm_tiny with the official H_functions (functions/svd_replacement.py). The replay rebuilds those
from the stored arrays (`jaxdiff.operators.official_svd`; index sets checked against the mask as
sets, used in the stored order, which is the official V's), runs the `ddrm` sampler with
`official=True` on the stored float32 alpha-bars at the stored t (checked against DDRM's grid
for `args.timesteps`), feeds every draw back and compares every state it produces.

Rules (fixture README): x_t, x0_t and the spectral states |diff| <= 1e-5 * max(1, max|x_t|)
(deno: atol 1e-4), floored at 3x the official code's own float32-vs-float64 difference
(ddrm.json f64_replay); et atol 1e-4; y, U_t_y, init_y 1e-5 relative to max(1, max|ref|); the
schedule, singulars, index sets and masks exactly.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.diffusion import space_timesteps
from jaxdiff.diffusion.schedule import Schedule
from jaxdiff.operators import official_svd as off
from jaxdiff.parity.common import Fixture, f64_level, f64_max, swap01
from jaxdiff.parity.operators import index_sets, svd_probes
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.ddrm import initial_state

TRAJECTORY = ("x_t",)
RTOL_X, ATOL_DENO, ATOL_EPS = 1e-5, 1e-4, 1e-4
NOT_EXPOSED = "an intermediate of the official step the sampler does not expose (it is in x_t)"
STEP_INTERMEDIATES = (
    "Sig_inv_U_t_y", "Sigma", "inv_singulars_and_zero", "large_singulars_index", "largest_alphas",
    "largest_sigmas", "remaining_s", "diff_sigma_t_nextB", "sigma_tilde_nextA",
    "sigma_tilde_nextC", "std_nextA", "std_nextC",
)  # fmt: skip


def build_svd(deg: str, fx: Fixture, shape):
    """(official SVD form, op_params) for the fixture's `deg`; DDRM's H_pinv divides."""
    if deg.startswith("inp"):
        params = index_sets(fx, shape, "op_")
        n_kept = len(fx["op_kept_indices"])
        return off.OfficialInpainting(shape, n_kept, pinv_zero="divide"), params
    if deg.startswith("sr"):
        svd = off.OfficialSuperResolution(
            shape, int(fx["op_ratio"]), fx["op_U_small"], fx["op_V_small"],
            fx["op_singulars_small"], pinv_zero="divide",
        )  # fmt: skip
        return svd, {}
    if deg == "deblur_aniso":  # Deblurring2D: rows by kernel 1, columns by kernel 2
        for i in ("1", "2"):
            fx.skip(f"op_kernel{i}", "the 1-D kernels the stored SVD pieces come from")
        svd = off.OfficialDeblurring(
            shape, fx["op_U_small1"], fx["op_V_small1"], fx["op_singulars_small1"],
            fx["op_perm"], tiled=True, pinv_zero="divide", u_small2=fx["op_U_small2"],
            v_small2=fx["op_V_small2"], singulars_small2=fx["op_singulars_small2"],
        )  # fmt: skip
        return svd, {}
    if deg.startswith("deblur"):
        fx.check("op_H_small", off.official_blur_matrix(fx["op_kernel"], shape[0]))
        svd = off.OfficialDeblurring(
            shape, fx["op_U_small"], fx["op_V_small"], fx["op_singulars_small"],
            fx["op_perm"], tiled=True, pinv_zero="divide",
        )  # fmt: skip
        return svd, {}
    if deg.startswith("deno"):
        return off.OfficialDenoising(shape), {}
    if deg == "color":  # torch.svd's basis of the grey row, as stored
        pieces = [fx[f"op_{k}"] for k in ("U_small", "V_small", "singulars_small")]
        return off.OfficialColorization(shape, *pieces), {}
    raise ValueError(f"ddrm fixture: unknown deg {deg!r}")


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, "ddrm", dtype, trajectory=TRAJECTORY)
    cfg, task = fx.config, fx.task
    args = cfg["args"]
    eta, eta_b = float(args["eta"]), float(args["etaB"])
    sigma_0 = float(fx["sigma_0"])
    x_T_noise = np.asarray(fx["x_T_noise"])
    b = x_T_noise.shape[0]
    shape = nhwc_shape(fx["x0"])
    n_train = int(cfg["diffusion"]["num_diffusion_timesteps"])
    with fx.context():
        # the chain on the stored float32 alpha-bars (the code's own cumprod), at the stored t
        t = np.asarray(fx["t"]).astype(np.int64)
        fx.exact("t", t, space_timesteps(n_train, f"ddrm{int(args['timesteps'])}")[::-1])
        fx.exact("t_next", np.concatenate([t[1:], [-1]]))
        sched = Schedule(np.asarray(fx["at"], np.float64)[::-1], t[::-1], n_train, "learned_range")
        at_next = sched.tables["alphas_cumprod_prev"][::-1].astype(np.float32)
        fx.exact("at_next", at_next)
        # the official sigma_t = sqrt(1 - a_t) / sqrt(a_t), in float32
        at = np.asarray(fx["at"], np.float32)
        fx.check("sigma", np.sqrt(1 - at) / np.sqrt(at), rtol=1e-6)
        fx.check("sigma_next", np.sqrt(1 - at_next) / np.sqrt(at_next), rtol=1e-6)
        svd, op_params = build_svd(task["deg"], fx, shape)
        fx.exact("singulars", svd.singulars(op_params))
        svd_probes(fx, svd, op_params, shape)
        op = off.OfficialOperator(svd, op_params)
        fn, params, _ = fx.model("adm_tiny", model_dir)
        sample = get_sampler("ddrm")(
            fn, sched, operator=op, image_shape=shape, dtype=fx.jdtype, keep_trajectory=True,
            official=True, eta=eta, eta_b=eta_b, sigma=sigma_0,
        )  # fmt: skip
        msz = svd.rank
        # x_T's draw: its flat NCHW order is the spectral order; reshape (no transpose) keeps it
        z_T = x_T_noise.reshape(b, *shape)
        noise = {
            "full": swap01(fx["noise_full"]),
            "after": swap01(fx["noise_after"])[..., :msz],
            "before": swap01(fx["noise_before"]),
        }
        rep = {"x_T_noise": fx.jnp(z_T), "noise": jax.tree.map(fx.jnp, noise)}
        keys = jax.random.split(jax.random.key(0), b)
        y = fx.jnp(fx["y"])
        res = jax.jit(batched(sample, shared_op_params=True))(params, keys, y, op_params, None, rep)
        traj = jax.tree.map(swap01, res.trajectory)
        x0 = fx.jnp(fx.nhwc("x0"))
        y_clean = np.asarray(jax.vmap(lambda x: svd.H(op_params, x))(x0))
        a_T = fx.jnp(fx["at"][0])
        s = svd.singulars(op_params).astype(fx.jdtype)

        def init(yb, z):
            return initial_state(svd, op_params, a_T, s, svd.Ut(op_params, yb), sigma_0, z, True)

        init_out = jax.vmap(init)(y, fx.jnp(z_T))
        u_t_y = np.asarray(jax.vmap(lambda yb: svd.Ut(op_params, yb))(y))
    small = lambda name: max(1.0, float(np.abs(fx.arrays.get(name, 0)).max()))  # noqa: E731
    for name, got in (("y_clean", y_clean), ("U_t_y", u_t_y), ("init_y", init_out["init_y"])):
        fx.check(name, got, rtol=RTOL_X, scale=small(name))
    if {"y_clean", "y_noise"} <= set(fx.arrays):
        y_rebuilt = fx.arrays["y_clean"] + sigma_0 * fx["y_noise"]
        fx.check("y", y_rebuilt, rtol=RTOL_X, scale=small("y"))
    fx.skip("pinv_y", "the runner's picture (README): deblurring stores y, inpainting adds ones")
    deno = task["deg"].startswith("deno")
    f64 = task.get("f64_replay", {})
    lvl_x, lvl_x0 = f64_level(f64, "x_t"), f64_level(f64, "x0_t")
    if dtype == "float64":  # against the float32 reference: its own float32 noise, 3x (whole run)
        rule = {"atol": 0.0, "rtol": 0.0}
        lvl_x, lvl_x0 = f64_max(lvl_x), f64_max(lvl_x0)
    elif deno:
        rule = {"atol": ATOL_DENO, "rtol": 0.0}
    else:
        rule = {"atol": 0.0, "rtol": RTOL_X, "scale": small("x_t")}
    fx.check(
        "x_T",
        init_out["x_T"],
        **rule,
        nhwc=True,
        f64=None if lvl_x is None else f64_max(np.atleast_1d(lvl_x)[:1]),
    )
    for ours, theirs, lvl in (
        ("x", "x_t", lvl_x),
        ("x0_hat", "x0_t", lvl_x0),
        ("V_t_x0", "V_t_x0", lvl_x0),
        ("Vt_next", "Vt_xt_mod_next", lvl_x),
    ):
        nhwc = theirs in ("x_t", "x0_t")
        fx.check(theirs, traj[ours], **rule, nhwc=nhwc, per_step=True, f64=lvl)
    svt = traj["V_t_x0"][..., :msz] * np.asarray(s)
    fx.check("SVt_x0", svt, **rule, per_step=True, f64=lvl_x0)
    fx.check("et", traj["eps"], ATOL_EPS, nhwc=True, per_step=True)
    for name in ("before", "after"):
        got = np.asarray(traj[name])  # (T, B, m): the same for every image
        fx.exact(f"cond_{name}", got[:, 0])
    fx.exact("n_after", np.asarray(traj["after"])[:, 0].sum(-1))
    for name in STEP_INTERMEDIATES:
        fx.skip(name, NOT_EXPOSED)
    fx.skip("betas", "the official cumprod's input (the run uses the stored float32 at)")
    return fx.report(
        "ddrm", batch=b, eta=eta, eta_b=eta_b, sigma_0=sigma_0,
        reference_f64_replay_max_abs_diff_x_t=f64_max(lvl_x),
    )  # fmt: skip


def nhwc_shape(x0) -> tuple:
    """(H, W, C) of the fixture's NCHW images."""
    return tuple(np.moveaxis(np.asarray(x0), -3, -1).shape[1:])
