"""Replay of the DAPS trajectory fixtures (`daps_<task>_b<B>.npz` + `daps.json`).

Settings come from the files: the annealing / ODE grids from `daps.json` sampler_config (the
"daps" time grid), the MCMC settings (algorithm, steps, lr, tau, lr_min_ratio, momentum) from the
task's `mcmc`, VPPrecond's constants from `vpprecond`, the batch size from the arrays. mc_algo
"hmc" (the repo's pixel_hmc groups) replays too: the velocity draw `hmc_velocity_init` is fed
back and `hmc_velocity` compared where stored, as the latent DAPS sets name them. The operators
are DPS's, built by `parity.dps.build_operator` from the stored arrays or the operator config,
and y = A(x0) + sigma_y y_noise is checked. Every draw is fed back (x_T = sigma_max
x_start_noise; per step the L MCMC draws and the re-noise draw). Compared per step: x_t, x0hat,
every ODE state and denoiser output, every MCMC iterate, data gradient and loss; the grids and
the step sizes.

Rules (fixture README "Tolerances"): atol 2e-3 on x_t / x0hat / ode_x / mcmc_x / ode_denoised /
mcmc_data_grad over whole trajectories, floored at 3x the official code's own float32-vs-float64
difference (daps.json f64_replay); rtol 1e-5 on mcmc_loss, ode_c_noise and the step sizes; rtol
1e-6 on ode_time and sigma_steps.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.diffusion.annealing import poly_grid
from jaxdiff.parity.common import Fixture, f64_level, model_name, swap01
from jaxdiff.parity.dps import build_operator, measurement

TRAJECTORY = ("x_t",)
ATOL_TRAJ = 2e-3
RTOL_LOSS = 1e-5
RTOL_GRID = 1e-6
OPERATOR_NAMES = {"down_sampling": "super_resolution", "inpainting": "inpaint"}


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    from jaxdiff.samplers import batched, get_sampler

    fx = Fixture.load(npz_path, "daps", dtype, trajectory=TRAJECTORY)
    cfg, task = fx.config, fx.task
    ann = cfg["sampler_config"]["annealing_scheduler_config"]
    ode = cfg["sampler_config"]["diffusion_scheduler_config"]
    mc, vp = task["mcmc"], cfg.get("vpprecond", {})
    for sc in (ann, ode):
        timestep = str(sc.get("timestep", "poly-7"))
        if sc.get("name", "edm") != "edm" or not timestep.startswith("poly-"):
            raise ValueError(f"{fx.path}: only the 'edm' scheduler with 'poly-p' timesteps")
    algo = mc.get("mc_algo", "langevin")
    if algo not in ("langevin", "hmc") or mc.get("prior_solver", "gaussian") != "gaussian":
        raise ValueError(
            f"{fx.path}: only mc_algo 'langevin' or 'hmc' with prior_solver 'gaussian'"
        )
    op_cfg = dict(task.get("operator", {}))
    op_cfg["name"] = OPERATOR_NAMES.get(op_cfg.get("name"), op_cfg.get("name"))
    x_start = fx.nhwc("x_start_noise")
    b, shape = x_start.shape[0], x_start.shape[1:]
    with fx.context():
        op = build_operator(fx, op_cfg, shape, official="daps")
        y = measurement(fx, op, float(task.get("operator", {}).get("sigma", 0.05)))
        fn, params, meta = fx.model(model_name(cfg.get("model")), model_dir)
        m_steps = int(vp.get("M", 1000))
        if meta["diffusion"].get("num_timesteps", 1000) != m_steps:
            raise ValueError(f"{fx.path}: the model has a different number of timesteps than M")
        sample = get_sampler("daps")(
            fn, None, operator=op, image_shape=shape,
            annealing_steps=int(ann["num_steps"]), sigma_max=float(ann["sigma_max"]),
            sigma_min=float(ann["sigma_min"]), rho=float(ann.get("timestep", "poly-7")[5:]),
            ode_steps=int(ode["num_steps"]), ode_sigma_min=float(ode["sigma_min"]),
            ode_rho=float(ode.get("timestep", "poly-7")[5:]), mcmc_steps=int(mc["num_steps"]),
            vp_beta_min=float(vp.get("beta_min", 0.1)), vp_beta_d=float(vp.get("beta_d", 19.9)),
            lr=float(mc["lr"]), tau=float(mc["tau"]), lr_min_ratio=float(mc["lr_min_ratio"]),
            mc_algo=algo, momentum=float(mc.get("momentum", 0.9)),
            record_inner=True, keep_trajectory=True, dtype=fx.jdtype,
        )  # fmt: skip
        noise = {
            "mcmc": np.moveaxis(fx.nhwc("mcmc_noise"), 2, 0),  # (N, L, B) -> (B, N, L)
            "renoise": swap01(fx.nhwc("renoise_noise")),  # (N, B, ...) -> (B, N, ...)
        }
        if algo == "hmc":  # the velocity drawn before each step's updates
            noise["velocity"] = swap01(fx.nhwc("hmc_velocity_init"))
        rep = {"x_T": fx.jnp(x_start), "noise": jax.tree.map(fx.jnp, noise)}
        keys = jax.random.split(jax.random.key(0), b)
        run = jax.jit(batched(sample, shared_op_params=True))
        traj = jax.tree.map(np.asarray, run(params, keys, y, op.sample(None), None, rep).trajectory)
    fx.rel("sigma_steps", sample.sigmas, RTOL_GRID)
    rho = float(ann.get("timestep", "poly-7")[5:])
    times = poly_grid(int(ann["num_steps"]), float(ann["sigma_max"]), float(ann["sigma_min"]), rho)
    fx.rel("anneal_time_steps", times.astype(np.float32), RTOL_GRID)  # sigma_min last, not 0
    fx.rel("ode_time", sample.ode_grid, RTOL_GRID)
    fx.rel("ode_c_noise", sample.c_noise, RTOL_LOSS)
    fx.rel("mcmc_lr", traj["lr"][0], RTOL_LOSS)
    for name in ("prior_sigma", "ode_model_sigma", "mcmc_sigma", "mcmc_ratio"):
        fx.skip(name, "a scalar of the official schedule the sampler folds into the grids above")

    def steps_first(a):  # (B, N, ...) -> (N, B, ...); (B, N, K, ...) -> (N, K, B, ...)
        a = np.moveaxis(a, 0, 1)
        return np.moveaxis(a, 1, 2) if a.ndim > 5 else a

    with_last = lambda states, last: np.concatenate([states, last[:, None]], axis=1)  # noqa: E731
    x0hat = steps_first(traj["x0_hat"])
    got = {
        "x_t": steps_first(traj["x"]),
        "x0hat": x0hat,
        "ode_x": with_last(steps_first(traj["ode_x"]), x0hat),
        "ode_denoised": steps_first(traj["ode_denoised"]),
        "mcmc_x": with_last(steps_first(traj["mcmc_x"]), steps_first(traj["x0_y"])),
        "mcmc_data_grad": steps_first(traj["mcmc_data_grad"]),
    }
    if algo == "hmc" and "hmc_velocity" in fx:
        got["hmc_velocity"] = steps_first(traj["hmc_velocity"])
    f64 = task.get("f64_replay", {})
    for key, g in got.items():
        ref = None
        if key == "x0hat" and "x0hat" not in fx and "ode_x" in fx:
            ref = fx.arrays["ode_x"][:, -1]  # the Euler state at ode sigma_min
        fx.check(key if ref is None else "ode_x", g, ATOL_TRAJ, ref=ref, nhwc=True,
                 per_step=True, f64=f64_level(f64, key), key=key)  # fmt: skip
    if "mcmc_loss" in fx:
        # the official loss is summed over the batch
        fx.rel("mcmc_loss", traj["mcmc_loss"].sum(axis=0), RTOL_LOSS)
    if algo == "hmc":
        fx.skip("hmc_velocity_init", "a draw, fed back as the velocity of each step")
    return fx.report("daps", batch=b, annealing_steps=int(ann["num_steps"]), mc_algo=algo)
