"""Replay of the MPGD trajectory fixtures (`mpgd_<task>.npz` + `mpgd_<task>.json`).

The fixtures ran KellyYutongHe/mpgd_pytorch's `x0ddim` `p_sample_loop` with the `mpgd_wo_proj`
conditioning on adm_tiny, one image per run (the official loader's batch 1), with the official
operators of guided_diffusion/measurements.py (DPS's: the Resizer super-resolution, the
reflect-padded Gaussian blur). The replay builds the operator with the registry from the stored
tables / kernel (`parity.dps.build_operator`, the Resizer tables checked), runs the `mpgd`
sampler on the schedule the sidecar names (`ddim<N>` respacing, eta and scale from the npz),
feeds x_T and the per-step draws back and compares every recorded state per step.

Rule (tests/fixtures/mpgd/README.txt): |got - ref| <= atol + rtol * max|ref| per step, atol 1e-6,
rtol 2e-6 (float32 rounding of the largest entry), floored at 3x the official code's own
float32-vs-float64 difference for that array and step (sidecar "f64_replay"), and no error above
1e-3 * max(1, max|ref|) whatever the floor; the norm rtol 1e-5
or 3x its float64 level; the measurement 1e-5; schedules exactly or rtol 1e-6.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.parity.common import Fixture, f64_level, f64_max, model_name, swap01
from jaxdiff.parity.dps import build_operator, measurement
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("x_t",)
ATOL, RTOL, RTOL_NORM = 1e-6, 2e-6, 1e-5
CAP = 1e-3  # no state error above CAP * max(1, max|ref|), whatever the float64 level
# fixture array -> the mpgd sampler's trajectory record
CHAIN = {"x_t": "x", "x0_hat": "x0_hat", "x0_guided": "x0_guided", "eps": "eps"}


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    path = str(npz_path)
    side = path[: -len(".npz")].rsplit("/", 1)[-1] + ".json"
    fx = Fixture.load(npz_path, "mpgd", dtype, sidecar_name=side, trajectory=TRAJECTORY)
    dc = fx.config["diffusion"]
    if dc.get("model_mean_type", "epsilon") != "epsilon" or dc.get("dynamic_threshold"):
        raise ValueError(f"{fx.path}: only epsilon prediction without dynamic threshold")
    steps_train = int(dc.get("steps", 1000))
    if dc.get("rescale_timesteps") and steps_train != 1000:
        raise ValueError(f"{fx.path}: rescaled timesteps of a {steps_train}-step schedule")
    if fx.config.get("noise", {}).get("name", "gaussian") != "gaussian":
        raise ValueError(f"{fx.path}: only Gaussian measurement noise")
    eta, scale, sigma = (float(fx[k]) for k in ("eta", "scale", "sigma"))
    x_T = fx.nhwc("x_T")
    b, shape = x_T.shape[0], x_T.shape[1:]
    levels = fx.config.get("f64_replay", {})
    with fx.context():
        sched = make_schedule(
            steps_train,
            dc.get("noise_schedule", "linear"),
            variance_type=dc.get("model_var_type", "learned_range"),
            respacing=dc["timestep_respacing"],
        )
        order = np.arange(sched.num_steps)[::-1]
        fx.exact("timestep_map", sched.timestep_map)
        fx.exact("model_timestep", np.asarray(sched.timestep_map[order], np.float64))
        fx.rel("alphas_cumprod", sched.alphas_cumprod, 1e-12)
        a_t = sched.tables["alphas_cumprod"][order]
        a_prev = sched.tables["alphas_cumprod_prev"][order]
        fx.rel("alpha_bar_prev", a_prev, 1e-6)
        # the code's float32 expression (1 - a_t / a_prev cancels at the last steps)
        f32_t, f32_prev, f32_eta = (np.float32(v) for v in (a_t, a_prev, eta))
        ddim_sigma = f32_eta * np.sqrt((1 - f32_prev) / (1 - f32_t)) * np.sqrt(1 - f32_t / f32_prev)
        fx.rel("ddim_sigma", ddim_sigma, 1e-6, atol=1e-7)
        op = build_operator(fx, fx.config.get("operator", {}), shape)
        y = measurement(fx, op, sigma)
        fn, params, _ = fx.model(model_name(fx.config.get("model")), model_dir)
        sample = get_sampler("mpgd")(
            fn, sched, operator=op, image_shape=shape, eta=eta, scale=scale,
            clip_denoised=bool(dc.get("clip_denoised", True)), dtype=fx.jdtype,
            keep_trajectory=True,
        )  # fmt: skip
        rep = {"x_T": fx.jnp(x_T), "noise": fx.jnp(swap01(fx.nhwc("noise")))}
        keys = jax.random.split(jax.random.key(0), b)
        run = jax.jit(batched(sample, shared_op_params=True))
        res = run(params, keys, y, op.sample(None), None, rep)
        traj = jax.tree.map(swap01, res.trajectory)
    for name, key in CHAIN.items():
        lvl = f64_level(levels, name)
        if name == "eps" and lvl is not None and f64_level(levels, "x_t") is not None:
            # eps = (x_t / sqrt(abar) - x0) / sqrt(1 / abar - 1) carries the step's input
            # error times 1 / sqrt(1 - abar) (~100 at the last step of 10): the floor takes
            # the reference's own input level through that factor
            x_in = np.concatenate([[0.0], f64_level(levels, "x_t")[:-1]])
            lvl = np.maximum(lvl, x_in / np.sqrt(1 - a_t))
        r = fx.check(name, traj[key], ATOL, RTOL, nhwc=True, per_step=True, f64=lvl)
        if r is not None:  # never looser than CAP * max(1, max|ref|)
            r["cap"] = CAP * max(1.0, float(np.abs(fx.arrays[name]).max()))
            r["pass"] = bool(r["pass"] and r["max_abs_err"] <= r["cap"])
    fx.check("sample", res.x0, ATOL, RTOL, nhwc=True, f64=f64_max(f64_level(levels, "x_t")))
    rel = f64_max(levels.get("rel_diff_norm_per_step"))
    fx.rel("norm", traj["norm"], max(RTOL_NORM, 3 * (rel or 0.0)))
    fx.skip("eps_model", "the model's raw eps (the chain uses eps from the clamped x0, `eps`)")
    fx.skip("t_frac", "t / N, read only by the autoencoder variants (mpgd_ae, mpgd_z)")
    fx.skip("kernel_f64", "the float64 kernel (the official run convolves with `kernel`)")
    return fx.report(
        "mpgd", images=b, steps=int(sched.num_steps), eta=eta, scale=scale, sigma=sigma,
        diverged_at=np.asarray(res.diverged_at).tolist(),
    )  # fmt: skip
