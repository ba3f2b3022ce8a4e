"""Replay of the PnP-DM trajectory fixtures (`pnpdm_<name>.npz` + `pnpdm_<name>.json`).

The fixtures ran zihuiwu/PnP-DM-public's PnPEDM (sampler.mode edm_sde or edm) on adm_tiny
wrapped in its VPPrecond, one image per run, with its circulant Gaussian blur
(`gaussian_blur_circ`: conv with the kernel zero-padded to the image, then fftshift = jaxdiff's
`circular_blur` with that full-size kernel) or its `super_resolution_svd` (DDRM's block-mean SVD:
`official_svd.OfficialSuperResolution` from the stored torch.svd arrays, y flat). The replay
rebuilds the operator from the stored arrays, runs the `pnpdm` sampler with official=True (the
prior step starts at the first grid level below rho) on the sidecar's settings (iterations, EDM
steps and rho, sigma range, rho schedule from the files, the network's sigma range as the code
computed it), feeds every draw back (the likelihood draw of each iteration, the SDE draw of each
Euler step) and compares z and x per iteration.

Rule (tests/fixtures/pnpdm/README.txt): |got - ref| <= atol + rtol * max|ref| per iteration,
atol 1e-6, rtol 2e-6, floored at 3x the official code's own float32-vs-float64 difference
(sidecar "f64_replay"; its running maximum over the iterations so far), never above
1e-3 * max(1, max|ref|); rho rtol 1e-6; the grid rtol 1e-12; i_start exactly; the measurement
1e-5.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.operators import official_svd as off
from jaxdiff.operators.proximal import CircularBlur
from jaxdiff.parity.common import Fixture, f64_level, model_name, swap01
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("z", "x")
ATOL, RTOL = 1e-6, 2e-6
CAP = 1e-3
MODES = {"edm_sde": "sde", "edm": "ode"}
OPERATORS = ("gaussian_blur_circ", "super_resolution_svd")


def sample_iters(num_iters: int, burn_in: int, per_run: int) -> np.ndarray:
    """The iterations whose x the code returns (pnp_edm.py): `i in linspace(burn_in, K - 1,
    S + 1, dtype=int)[1:]`, a membership test, so a repeated grid point gives one sample."""
    grid = np.linspace(burn_in, num_iters - 1, per_run + 1, dtype=int)[1:]
    return np.array([i for i in range(num_iters) if i in grid], int)


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    path = str(npz_path)
    side = path[: -len(".npz")].rsplit("/", 1)[-1] + ".json"
    fx = Fixture.load(npz_path, "pnpdm", dtype, sidecar_name=side, trajectory=TRAJECTORY)
    sc = fx.config["sampler"]
    if sc.get("mode") not in MODES:
        raise ValueError(f"{fx.path}: sampler.mode {sc.get('mode')!r}; replayed: {list(MODES)}")
    ek, ck = sc.get("edm_kwargs", {}), sc.get("common_kwargs", {})
    if (ek.get("discretization"), ek.get("schedule"), ek.get("scaling")) != (
        "edm",
        "linear",
        "none",
    ):
        raise ValueError(f"{fx.path}: only the 'edm' discretization (linear schedule, no scaling)")
    op_cfg = fx.config.get("operator", {})
    if op_cfg.get("name") not in OPERATORS:
        raise ValueError(f"{fx.path}: operator {op_cfg.get('name')!r}; replayed: {OPERATORS}")
    svd_task = op_cfg["name"] == "super_resolution_svd"
    dc = fx.config.get("diffusion", {})
    x_T = fx.nhwc("x0")
    b, shape = x_T.shape[0], x_T.shape[1:]
    k_iters, n = int(fx["rho"].shape[0]), int(fx["t_steps"].shape[0]) - 1
    sigma = float(fx["sigma"])
    hp = {"rho": float(fx["rho0"]), "rho_decay": float(fx["rho_decay_rate"]),
          "rho_min": float(fx["rho_min"])}  # fmt: skip
    levels = fx.config.get("f64_replay", {})
    edm_rho = float(fx["edm_rho"]) if "edm_rho" in fx else float(ek.get("rho", 7.0))
    if np.any(fx["x_init"] != 0):
        raise ValueError(f"{fx.path}: the replay starts from zeros (operator.initialize)")
    with fx.context():
        if svd_task:  # DDRM's SuperResolution (torch.svd of the 1 x r^2 mean row), y flat
            svd = off.OfficialSuperResolution(
                shape, int(fx["ratio"]), fx["U_small"], fx["V_small"], fx["singulars_small"]
            )
            op = off.OfficialOperator(svd)
        else:
            op = CircularBlur(shape, kernel=fx["full_kernel"])
        params_op = op.sample(None)
        x0 = fx.jnp(x_T)
        flat = fx.arrays["y_clean"].ndim == 2
        y_clean = jax.vmap(lambda x: op.apply(params_op, x))(x0)
        fx.check("y_clean", y_clean, 1e-5, nhwc=not flat)
        fx.check("y", fx.arrays["y_clean"] + sigma * fx["y_noise"], 1e-6)
        y = fx.jnp(fx["y"] if flat else fx.nhwc("y"))
        fx.exact("x_init", np.zeros_like(fx.arrays["x_init"]))  # both tasks' initialize: zeros
        fn, params, _ = fx.model(model_name(fx.config.get("model")), model_dir)
        sample = get_sampler("pnpdm")(
            fn, None, operator=op, image_shape=shape, iterations=k_iters, prior_steps=n,
            mode=MODES[sc["mode"]], edm_rho=edm_rho,
            sigma_min=ck.get("sigma_min") or 0.002, sigma_max=ck.get("sigma_max") or 80.0,
            net_sigma_range=(float(fx["net_sigma_min"]), float(fx["net_sigma_max"])),
            sigma=sigma, init="zeros", official=True, dtype=fx.jdtype, keep_trajectory=True,
            vp_beta_min=float(dc.get("beta_min", 0.1)), vp_beta_d=float(dc.get("beta_d", 19.9)),
            **hp,
        )  # fmt: skip
        fx.rel("t_steps", sample.sigma_steps, 1e-12)
        lik = swap01(fx.nhwc("lik_noise"))  # (B, K, H, W, C)
        prior = np.zeros((b, k_iters, n + 1, *shape), np.float32)
        if "prior_noise" in fx and fx["prior_noise"].size:
            pn = fx.nhwc("prior_noise")  # (J, B, H, W, C)
            for j, (it, i) in enumerate(fx["prior_slot"]):
                prior[:, it, i + 1] = pn[j]
        rep = {
            "noise": {
                "lik": fx.jnp(lik),
                "lik_y": fx.jnp(np.zeros((b, k_iters, *y.shape[1:]), np.float32)),
                "prior": fx.jnp(prior),
                "langevin": fx.jnp(np.zeros((b, k_iters, 0, *shape), np.float32)),
            }
        }
        keys = jax.random.split(jax.random.key(0), b)
        run = jax.jit(batched(sample, shared_op_params=True))
        res = run(params, keys, y, params_op, None, rep)
        traj = jax.tree.map(swap01, res.trajectory)
    for name, key in (("z", "z"), ("x", "x")):
        lvl = f64_level(levels, name)
        if lvl is not None:
            lvl = np.maximum.accumulate(np.nan_to_num(np.asarray(lvl, np.float64)))
        r = fx.check(name, traj[key], ATOL, RTOL, nhwc=True, per_step=True, f64=lvl)
        if r is not None:
            r["cap"] = CAP * max(1.0, float(np.abs(fx.arrays[name]).max()))
            r["pass"] = bool(r["pass"] and r["max_abs_err"] <= r["cap"])
    fx.rel("rho", np.asarray(traj["rho"])[:, 0], 1e-6)
    fx.exact("i_start", np.asarray(traj["i_start"])[:, 0])
    at = sample_iters(k_iters, int(sc.get("num_burn_in_iters", 0)),
                      int(sc.get("num_samples_per_run", 1)))  # fmt: skip
    lvl = f64_level(levels, "x")
    fx.check("samples", np.asarray(traj["x"])[at], ATOL, RTOL, nhwc=True, per_step=True,
             f64=None if lvl is None else np.max(lvl))  # fmt: skip
    fx.skip("den_sigma", "the noise level of each network call (the grid and i_start carry it)")
    fx.skip("kernel", "the small kernel (the operator convolves with `full_kernel`)")
    fx.skip("ratio", "the SR factor (an input of the SVD form)")
    fx.skip("net_sigma_max", "the network's sigma_max (80 < it: EDM's sigma_max is used)")
    return fx.report(
        "pnpdm", images=b, iterations=k_iters, prior_steps=n, mode=sc["mode"], sigma=sigma,
        diverged_at=np.asarray(res.diverged_at).tolist(), **hp,
    )  # fmt: skip
