"""Replay of the DPS trajectory fixtures (`dps_<task>_b<B>.npz` + `dps.json`, README part (d)).

Settings come from the files: the diffusion config (steps, schedule, variance type, respacing,
clip_denoised) and the task's operator from `dps.json`, scale / sigma / mask / kernel / Resizer
tables from the npz, the batch size from the arrays. The operator is built with the registry
(`build_operator`, also DAPS's: its operators are DPS's). The official norm is over the whole
batch, so B > 1 replays with `batch_coupled_norm=True`. Every draw (x_T, per-step eps) is fed
back; the q_sample draws the official code consumes but never uses are listed as not compared.

Rules (fixture README): x_t and the pre-guidance sample atol 1e-3, x0hat 5e-3, each floored at
3x the official code's own float32-vs-float64 difference (dps.json f64_replay); the norm rtol
1e-5; the measurement 1e-5; the schedule and step indices exactly.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.parity.common import Fixture, f64_level, model_name, swap01
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("x_t",)
ATOL_X, ATOL_X0, RTOL_NORM = 1e-3, 5e-3, 1e-5


def build_operator(fx: Fixture, op_cfg: dict, image_shape, official: str = "dps"):
    """The task's forward model from the registry, configured from the stored arrays (mask,
    kernel, or the SR factor whose Resizer tables are checked against the stored ones) or, for
    the nonlinear tasks, from the operator config: phase retrieval pads by the official
    reference side (DPS hard-codes 256, DAPS's `resolution` defaults to it) and DAPS maps x to
    [0, 1] first (`official`: "dps" or "daps"); high dynamic range takes its scale."""
    from jaxdiff.operators import get_operator

    name = op_cfg.get("name")
    if name == "phase_retrieval":
        return get_operator(
            "phase_retrieval",
            image_shape=image_shape,
            oversample=float(op_cfg.get("oversample", 0.0 if official == "daps" else 2.0)),
            pad_reference=int(op_cfg.get("resolution", 256)),
            unit_input=official == "daps",
        )
    if name == "high_dynamic_range":
        scale = float(op_cfg.get("scale", 2.0))
        return get_operator("high_dynamic_range", image_shape=image_shape, scale=scale)

    if "mask" in fx:
        mask = np.asarray(fx["mask"], np.float32)
        mask = np.moveaxis(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), 1, -1)[0]
        return get_operator("inpaint", image_shape=image_shape, mask=mask)
    if "kernel" in fx:
        kernel = fx["kernel"]
        fx.skip("kernel_f64", "the float64 kernel (the official run convolves with `kernel`)")
        return get_operator("blur", image_shape=image_shape, kernel=kernel, method="direct")
    if op_cfg.get("name") == "super_resolution" or "resizer_dim2_weights" in fx:
        factor = op_cfg.get("scale_factor")
        if factor is None:
            raise ValueError(f"{fx.path}: super_resolution without operator.scale_factor")
        op = get_operator("super_resolution", image_shape=image_shape, factor=int(factor))
        for dim in ("dim2", "dim3"):
            for kind in ("weights", "field_of_view"):
                fx.check(f"resizer_{dim}_{kind}", op.tables[f"{dim}_{kind}"], 1e-7)
        return op
    raise ValueError(f"{fx.path}: operator {op_cfg.get('name')!r}: no stored mask/kernel/tables")


def measurement(fx: Fixture, op, sigma: float):
    """y_clean = A(x0) (1e-5) and y = y_clean + sigma y_noise (1e-6) checked; returns y."""
    params = op.sample(None)
    x0 = fx.jnp(fx.nhwc("x0"))
    fx.check("y_clean", jax.vmap(lambda x: op.apply(params, x))(x0), 1e-5, nhwc=True)
    if "y_noise" in fx and "y_clean" in fx:
        fx.check("y", fx.arrays["y_clean"] + sigma * fx["y_noise"], 1e-6)
    return fx.jnp(fx.nhwc("y"))


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, "dps", dtype, trajectory=TRAJECTORY)
    task, dc = fx.task, fx.config["diffusion_config"]
    if dc.get("model_mean_type", "epsilon") != "epsilon" or dc.get("dynamic_threshold"):
        raise ValueError(f"{fx.path}: only epsilon prediction without dynamic threshold")
    if dc.get("rescale_timesteps"):
        raise ValueError(f"{fx.path}: rescale_timesteps=True is not supported")
    noise_cfg = fx.config.get("noise", {"name": "gaussian"})
    likelihood = "poisson" if noise_cfg.get("name") == "poisson" else "gaussian"
    scale = float(fx["scale"]) if "scale" in fx else float(task["scale"])
    x_T = fx.nhwc("x_start")
    b, shape = x_T.shape[0], x_T.shape[1:]
    with fx.context():
        sched = make_schedule(
            int(dc.get("steps", 1000)),
            dc.get("noise_schedule", "linear"),
            variance_type=dc.get("model_var_type", "learned_range"),
            respacing=dc.get("timestep_respacing"),
        )
        fx.exact("timestep_map", sched.timestep_map)
        fx.exact("model_timestep", sched.timestep_map[::-1])
        fx.exact("step_index", np.arange(sched.num_steps)[::-1])
        fx.check("betas", sched.betas, 1e-12)
        op = build_operator(fx, task.get("operator", {}), shape)
        sigma = float(fx["sigma"]) if "sigma" in fx else float(noise_cfg.get("sigma", 0.0))
        y = measurement(fx, op, sigma) if likelihood == "gaussian" else fx.jnp(fx.nhwc("y"))
        fn, params, _ = fx.model(model_name(fx.config.get("model")), model_dir)
        sample = get_sampler("dps")(
            fn, sched, operator=op, image_shape=shape, scale=scale, likelihood=likelihood,
            batch_coupled_norm=b > 1, clip_denoised=bool(dc.get("clip_denoised", True)),
            dtype=fx.jdtype, keep_trajectory=True,
        )  # fmt: skip
        rep = {"x_T": fx.jnp(x_T), "noise": fx.jnp(swap01(fx.nhwc("eps_noise")))}
        keys = jax.random.split(jax.random.key(0), b)
        run = jax.jit(batched(sample, shared_op_params=True))
        traj = jax.tree.map(swap01, run(params, keys, y, op.sample(None), None, rep).trajectory)
    fx.skip("q_noise", "q_sample draws the official code consumes but never uses")
    f64 = task.get("f64_replay", {}).get(f"b{b}", {})
    lvl = f64_level(f64, "x_t")
    fx.check("x_t", traj["x"], ATOL_X, nhwc=True, per_step=True, f64=lvl)
    fx.check("x_t_pre_guidance", traj["x_pre_guidance"], ATOL_X, nhwc=True, per_step=True, f64=lvl)
    fx.check("x0hat", traj["x0_hat"], ATOL_X0, nhwc=True, per_step=True)
    # every image carries the batch's norm when coupled
    fx.rel("norm", traj["norm"][:, 0], RTOL_NORM)
    return fx.report("dps", batch=b, scale=scale, batch_coupled_norm=b > 1)
