"""Replay of the DSG trajectory fixtures (`dsg_<name>.npz` + `dsg_<name>.json`).

The fixtures ran LingxiaoYang2023/DSG2024's `p_sample_loop` (its DDIM or DDPM p_sample, as the
sidecar's diffusion config names) with the `DSG` conditioning on adm_tiny, one image per run
(the official loader's batch 1), with DPS's operators (the Resizer super-resolution, the
reflect-padded Gaussian blur). The replay builds the operator from the stored tables / kernel
(`parity.dps.build_operator`), runs the `dsg` sampler with official=True on the sidecar's
schedule (`timestep_respacing`, sampler, interval, guidance_scale, eta from the files), feeds x_T
and the per-step draws back and compares every recorded state per step.

Rule (tests/fixtures/dsg/README.txt): |got - ref| <= atol + rtol * max|ref| per step, atol 1e-6,
rtol 2e-6, floored at 3x the official code's own float32-vs-float64 difference for that array and
step (sidecar "f64_replay"; for the chain states x_t, x_pre_guidance and mean its running maximum
over the steps so far, as a state carries every earlier step's rounding), and no error above 1e-3
* max(1, max|ref|) whatever the floor (x0_hat, whole chain: floored, and the cap raised, to 3x
the measured error of the step's gated input x_t[k-1] over sqrt(abar_k), which x0_hat = (x -
sqrt(1 - abar) eps) / sqrt(abar) inherits); the norm (guided steps) rtol 1e-5 or 3x its float64
level; the measurement 1e-5; schedules exactly or rtol 1e-6. Where twice a recorded state's
float64 level already leaves that cap (a chaotic chain, decided from the sidecar alone), every
state is checked one step at a time from the reference's own inputs (`common.teacher_forced`)
within the cap, and the whole-chain errors are reported, not gating; there a guided step whose
reference x0_hat has a pixel within its own float32 noise of the clamp is reported, not gating
(`clamp_edge`).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.parity.common import (
    Fixture,
    chaotic,
    compare,
    f64_level,
    f64_max,
    model_name,
    nchw_to_nhwc,
    swap01,
    teacher_forced,
)
from jaxdiff.parity.dps import build_operator, measurement
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("x_t",)
ATOL, RTOL, RTOL_NORM = 1e-6, 2e-6, 1e-5
CAP = 1e-3  # no state error above CAP * max(1, max|ref|), whatever the float64 level
# fixture array -> the dsg sampler's trajectory record
CHAIN = {"x_t": "x", "x_pre_guidance": "x_pre_guidance", "mean": "mean", "x0_hat": "x0_hat"}


def clamp_edge(fx, sched, order, x_T, x_ref, x0_level) -> np.ndarray:
    """Per step: whether a pixel of the reference's unclamped x0_hat (from its own step input and
    eps, in float64) lies within 3x its float32-vs-float64 x0_hat level of +-1. The guidance
    gradient comes from the unclamped pixels only and is normalised, so there a rounding the
    reference itself makes can flip a pixel across the clamp and turn the step's direction: a
    discontinuity inside one step that teacher forcing cannot remove (the step is reported, not
    gating)."""
    if x0_level is None:
        return np.zeros(len(order), bool)
    level = np.nan_to_num(np.asarray(x0_level, np.float64).reshape(-1))
    x_in = np.concatenate([np.asarray(x_T, np.float64)[None], np.asarray(x_ref, np.float64)[:-1]])
    eps = nchw_to_nhwc(np.asarray(fx.arrays["eps_model"], np.float64))
    abar = np.asarray(sched.alphas_cumprod, np.float64)[order]
    shape = (-1,) + (1,) * (x_in.ndim - 1)
    x0 = (x_in - np.sqrt(1 - abar).reshape(shape) * eps) / np.sqrt(abar).reshape(shape)
    gap = np.abs(np.abs(x0) - 1).reshape(len(order), -1).min(1)
    return gap <= 3 * level[: len(order)]


def input_error(x_got, x_ref, sched, order) -> np.ndarray:
    """Per step k: the measured error of the step's input (0 for x_T, fed exactly; else
    max|x_got[k-1] - x_ref[k-1]| of the gated chain state x_t) over sqrt(abar_k), the factor by
    which x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar) carries it (the clamp only shrinks it)."""
    err = np.abs(np.asarray(x_got, np.float64) - np.asarray(x_ref, np.float64))
    err = err.reshape(err.shape[0], -1).max(axis=1)
    err_in = np.concatenate([[0.0], err[:-1]])
    return err_in / np.sqrt(np.asarray(sched.alphas_cumprod, np.float64)[order])


def capped(r: dict | None, cap: float, inherited=None) -> None:
    """Never looser than the cap CAP * max(1, max|ref|), whatever the float64 floor; except
    where x0_hat's floor is 3x the error it inherits from its (gated) input, which the cap on
    that input already bounds: there that floor is the limit (`steps_past_cap`)."""
    if r is None:
        return
    r["cap"] = cap
    err = np.asarray(r.get("per_step_max_abs_err", [r["max_abs_err"]]), np.float64)
    limit = np.full(err.shape, cap)
    if inherited is not None:
        inh = 3.0 * np.asarray(inherited, np.float64)[: len(err)]
        limit[: len(inh)] = np.maximum(limit[: len(inh)], inh)
        r["input_error_x3"] = float(inh.max())
        r["steps_past_cap"] = np.nonzero(inh > cap)[0].tolist()
    r["pass"] = bool(r["pass"] and np.all(err <= limit))


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    path = str(npz_path)
    side = path[: -len(".npz")].rsplit("/", 1)[-1] + ".json"
    fx = Fixture.load(npz_path, "dsg", dtype, sidecar_name=side, trajectory=TRAJECTORY)
    dc = fx.config["diffusion"]
    if dc.get("model_mean_type", "epsilon") != "epsilon" or dc.get("dynamic_threshold"):
        raise ValueError(f"{fx.path}: only epsilon prediction without dynamic threshold")
    steps_train = int(dc.get("steps", 1000))
    if dc.get("rescale_timesteps") and steps_train != 1000:
        raise ValueError(f"{fx.path}: rescaled timesteps of a {steps_train}-step schedule")
    kind = dc.get("sampler", "ddim")
    if kind not in ("ddim", "ddpm"):
        raise ValueError(f"{fx.path}: sampler {kind!r} (ddim or ddpm)")
    hp = {"guidance_scale": float(fx["guidance_scale"]), "interval": float(fx["interval"]),
          "eta": float(fx["eta"]) if kind == "ddim" else 1.0}  # fmt: skip
    sigma = float(fx["sigma"])
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
        fx.exact("idx", order)
        fx.exact("model_timestep", np.asarray(sched.timestep_map[order], np.float64))
        fx.rel("alphas_cumprod", sched.alphas_cumprod, 1e-12)
        op = build_operator(fx, fx.config.get("operator", {}), shape)
        y = measurement(fx, op, sigma)
        fn, params, _ = fx.model(model_name(fx.config.get("model")), model_dir)
        keys = jax.random.split(jax.random.key(0), b)

        def run(schedule, start, draws):
            sample = get_sampler("dsg")(
                fn, schedule, operator=op, image_shape=shape, step=kind, official=True,
                clip_denoised=bool(dc.get("clip_denoised", True)), dtype=fx.jdtype,
                keep_trajectory=True, **hp,
            )  # fmt: skip
            rep = {"x_T": fx.jnp(start), "noise": fx.jnp(draws)}
            return jax.jit(batched(sample, shared_op_params=True))(
                params, keys, y, op.sample(None), None, rep
            )

        noise = swap01(fx.nhwc("noise"))
        res = run(sched, x_T, noise)
        traj = jax.tree.map(swap01, res.trajectory)
        want = {n: nchw_to_nhwc(fx.arrays[n]) for n in CHAIN if n in fx.arrays}
        lvls = {n: f64_level(levels, n) for n in want}
        beyond = chaotic(levels, want, CAP)
        forced = teacher_forced(run, sched, x_T, want["x_t"], noise) if beyond else None
    guided = np.mod(order, hp["interval"]) == 0
    edge = np.zeros(len(order), bool)
    if beyond and "eps_model" in fx.arrays:
        edge = guided & clamp_edge(fx, sched, order, x_T, want["x_t"], lvls.get("x0_hat"))
    horizon = {}
    for name, key in CHAIN.items():
        if name not in want:
            continue
        cap = CAP * max(1.0, float(np.abs(want[name]).max()))
        lvl = lvls[name]
        if lvl is not None and name != "x0_hat":
            # a chain state carries every earlier step's rounding: the floor at step k is the
            # reference's largest level up to k (x0_hat is re-derived, 1/sqrt(abar) times x_t's)
            lvl = np.maximum.accumulate(np.nan_to_num(np.asarray(lvl, np.float64)))
        if beyond:  # whole chain reported, not gating; each step from the reference's inputs
            r = compare(traj[key], want[name], ATOL, RTOL, per_step=True, f64=lvl)
            horizon[name] = {**r, "cap": cap, "pass": bool(r["pass"] and r["max_abs_err"] <= cap)}
            r = fx.check(name, forced[key], cap, 0.0, nhwc=True, per_step=True,
                         key=f"{name}_teacher_forced")  # fmt: skip
            if name == "x_t" and r is not None and edge.any():
                err = np.asarray(r["per_step_max_abs_err"])
                tol = np.asarray(r.get("per_step_tol", r["tol"]))
                excused = edge & (err > tol)  # failing steps at the clamp's edge: reported
                r["clamp_edge_steps"] = np.nonzero(excused)[0].tolist()
                r["pass"] = bool(np.all((err <= tol) | excused))
                r["max_abs_err_gated"] = float(np.where(excused, 0.0, err).max())
            continue
        inherited = None
        if name == "x0_hat" and lvl is not None:
            # x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar) of the step's input x (x_T fed
            # exactly, then the gated state x_t[k-1]): that input's measured error, so amplified,
            # floors x0_hat's tolerance and the cap on it
            inherited = input_error(traj["x"], want["x_t"], sched, order)
            lvl = np.maximum(np.nan_to_num(np.asarray(lvl, np.float64)), inherited)
        r = fx.check(name, traj[key], ATOL, RTOL, nhwc=True, per_step=True, f64=lvl)
        capped(r, cap, inherited)
    sample = fx.check("sample", res.x0, ATOL, RTOL, nhwc=True, f64=f64_max(lvls.get("x_t")))
    if beyond and sample is not None:  # the chain's end: reported, not gating
        horizon["sample"] = fx.results.pop("sample")
    steps = forced if beyond else traj  # per-step quantities: from the checked steps' inputs
    # the code returns torch.zeros(1) as the distance of an unguided step: compare guided ones
    norm = np.asarray(steps["norm"])
    rel = f64_max(levels.get("rel_diff_norm_per_step"))
    fx.rel("norm", np.where(guided[:, None], norm, 0.0), max(RTOL_NORM, 3 * (rel or 0.0)))
    if kind == "ddim":  # the scalar std the radius is sqrt(n) times
        radius = np.asarray(steps["radius"])[:, 0] / np.sqrt(np.prod(shape))
        # the code's float32 sqrt(1 - abar/abar_prev) cancels at the last steps: a float64
        # replay sits 8e-5 (relative) from it there
        fx.rel("sigma_t", radius, 1e-6 if fx.dtype == "float32" else 2e-4, atol=1e-7)
    else:
        std = fx.arrays["sigma_t"].reshape(sched.num_steps, b, -1)[..., 0]
        fx.rel("sigma_t_first_pixel", np.asarray(steps["radius"]) / np.sqrt(np.prod(shape)),
               1e-5, ref=std)  # fmt: skip
        fx.skip("sigma_t", "the per-pixel learned std (the radius reads its first pixel)")
    fx.skip("eps_model", "the model's raw eps (x0_hat and the mean carry it)")
    fx.skip("var_model", "the model's variance channels (the ddpm mean and std carry them)")
    fx.skip("q_noise", "q_sample's draw of the noisy measurement, which DSG never reads")
    fx.skip("kernel_f64", "the float64 kernel (the official run convolves with `kernel`)")
    return fx.report(
        "dsg", images=b, steps=int(sched.num_steps), sampler=kind, sigma=sigma,
        diverged_at=np.asarray(res.diverged_at).tolist(), **hp,
        mode="teacher_forced" if beyond else "whole_chain", beyond_cap=beyond,
        chain_beyond_float32_horizon=horizon,
    )  # fmt: skip
