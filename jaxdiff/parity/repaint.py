"""Replay of the RePaint trajectory fixtures (`repaint_<name>.npz` + `repaint_<name>.json`).

The fixtures ran andreas128/RePaint's `p_sample_loop` (test.py's call) on adm_tiny with a pixel
mask and a small resampling walk. The replay reads the conf from the sidecar (respacing,
schedule_jump_params, clip_denoised), builds the `inpaint` operator from the stored keep-mask,
y = mask * gt, runs the `repaint` sampler with `official=True` (the code's last model output,
no final paste) and feeds x_T and every pair's draws back (z: p_sample's or undo's noise;
known: the blend's), then compares every recorded state per pair.

Rule (tests/fixtures/repaint/README.txt): |got - ref| <= atol + rtol * max|ref| per pair, atol
1e-6, rtol 2e-6, floored at 3x the official code's own float32-vs-float64 difference (sidecar
"f64_replay": x0_hat its own per pair; the chain states x_t and x_in the running maximum over
the pairs so far of theirs, `running_level`), never above 1e-3 * max(1, max|ref|); the walk,
timestep map and model timesteps exactly, the schedule rtol 1e-6.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.diffusion.time_grids import repaint_walk
from jaxdiff.parity.common import Fixture, f64_level, f64_max, model_name, swap01
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("x_t",)
ATOL, RTOL = 1e-6, 2e-6
CAP = 1e-3  # no state error above CAP * max(1, max|ref|), whatever the float64 level
CHAIN = {"x_t": "x", "x_in": "x_in", "x0_hat": "x0_hat"}
WALK_KEYS = ("n_sample", "jump_length", "jump_n_sample", "jump2_length", "jump2_n_sample",
             "jump3_length", "jump3_n_sample", "start_resampling")  # fmt: skip


def running_level(levels: dict):
    """The chain's float64 level per pair: the running maximum over the pairs so far of the
    reference's own float32-vs-float64 difference in x_t and x_in (a rounding error reached
    once is carried along by the chain; one pair's own level can be smaller by chance)."""
    per = [f64_level(levels, k) for k in ("x_t", "x_in")]
    if any(p is None for p in per):
        return None
    a = np.nan_to_num(np.asarray(per, np.float64), nan=0.0).max(axis=0)
    return np.maximum.accumulate(a).tolist()


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    path = str(npz_path)
    side = path[: -len(".npz")].rsplit("/", 1)[-1] + ".json"
    fx = Fixture.load(npz_path, "repaint", dtype, sidecar_name=side, trajectory=TRAJECTORY)
    conf = fx.config["conf"]
    if conf.get("predict_xstart") or conf.get("rescale_timesteps"):
        raise ValueError(f"{fx.path}: only epsilon prediction without rescaled timesteps")
    if not conf.get("inpa_inj_sched_prev", True) or conf.get("inpa_inj_sched_prev_cumnoise"):
        raise ValueError(f"{fx.path}: only the confs' blend (inpa_inj_sched_prev, no cumnoise)")
    jump = dict(conf["schedule_jump_params"])
    t_T = int(jump.pop("t_T"))
    walk = {k: int(v) for k, v in jump.items() if k in WALK_KEYS}
    x_T = fx.nhwc("x_T")
    b, shape = x_T.shape[0], x_T.shape[1:]
    levels = fx.config.get("f64_replay", {})
    with fx.context():
        sched = make_schedule(
            int(conf.get("diffusion_steps", 1000)),
            conf.get("noise_schedule", "linear"),
            variance_type="learned_range" if conf.get("learn_sigma", True) else "fixed_large",
            respacing=str(conf["timestep_respacing"]),
        )
        times = repaint_walk(t_T, **walk)
        fx.exact("times", np.asarray(times))
        fx.exact("timestep_map", sched.timestep_map)
        down = [t for t, t_next in zip(times[:-1], times[1:]) if t_next < t]
        fx.exact("model_timestep", sched.timestep_map[down])
        fx.rel("alphas_cumprod", sched.alphas_cumprod, 1e-6)
        fx.rel("betas", sched.tables["betas"], 1e-6)
        from jaxdiff.operators import get_operator

        masks = fx.nhwc("mask")
        op = get_operator("inpaint", image_shape=shape, mask=masks[0])
        op_params = {"mask": fx.jnp(masks)}  # per image
        y = jax.vmap(op.apply)(op_params, fx.jnp(fx.nhwc("x0")))
        fn, params, _ = fx.model(model_name(fx.config.get("model")), model_dir)
        sample = get_sampler("repaint")(
            fn, sched, operator=op, image_shape=shape, t_T=t_T, official=True,
            clip_denoised=bool(conf.get("clip_denoised", True)), dtype=fx.jdtype,
            keep_trajectory=True, **walk,
        )  # fmt: skip
        noise = {"z": swap01(fx.nhwc("noise_z")), "known": swap01(fx.nhwc("noise_known"))}
        rep = {"x_T": fx.jnp(x_T), "noise": jax.tree.map(fx.jnp, noise)}
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(params, keys, y, op_params, None, rep)
        traj = jax.tree.map(swap01, res.trajectory)
    chain_level = running_level(levels)
    for name, key in CHAIN.items():
        lvl = f64_level(levels, name) if name == "x0_hat" else chain_level
        r = fx.check(name, traj[key], ATOL, RTOL, nhwc=True, per_step=True, f64=lvl)
        if r is not None:  # never looser than CAP * max(1, max|ref|)
            r["cap"] = cap = CAP * max(1.0, float(np.nanmax(np.abs(fx.arrays[name]))))
            err = np.asarray(r.get("per_step_max_abs_err", [r["max_abs_err"]]), np.float64)
            limit = np.full(err.shape, cap)
            if name == "x0_hat" and lvl is not None:
                # the first model step runs from x_T, fed exactly: the reference's own level
                # there is one step's float32 noise (eps's, times 1 / sqrt(abar) ~ 157 at
                # t = 999), and 3x it may pass the cap: there that floor is the limit
                first = 3 * float(np.nan_to_num(np.asarray(lvl, np.float64).reshape(-1)[0]))
                limit[0] = max(cap, first)
                r["steps_past_cap"] = [0] if first > cap else []
            r["pass"] = bool(r["pass"] and np.all(err <= limit))
    fx.check(
        "sample", res.x0, ATOL, RTOL, nhwc=True, f64=f64_max(levels.get("max_abs_diff_sample"))
    )
    return fx.report(
        "repaint", images=b, pairs=len(times) - 1, model_steps=len(down), t_T=t_T, **walk,
        diverged_at=np.asarray(res.diverged_at).tolist(),
    )  # fmt: skip
