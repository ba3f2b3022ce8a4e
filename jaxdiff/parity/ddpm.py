"""Replay of the DDPM trajectory fixtures (`ddpm_*.npz` + same-name `.json`, README part (c)).

Two layouts, told apart by their arrays:
- guided-diffusion (`timestep_map`, `step_index`, respaced `betas`): the sidecar's steps,
  noise_schedule, timestep_respacing, learn_sigma / sigma_small and clip_denoised build the
  schedule, which must reproduce the stored timestep_map and respaced tables;
- diffusers (`timesteps`, `prev_timesteps`, a full float32 `alphas_cumprod`): the sidecar's
  scheduler_config gives variance type and clipping; the stored float32 alpha-bar table is the
  training schedule (torch's float32 linspace is not reproducible bit for bit in numpy), and the
  kept timesteps must be the sidecar's spacing.
Every recorded draw (x_T, per-step noise) is fed back, and every x_t, x0_hat (and log variance or
eps where stored) is compared per step.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from jaxdiff.diffusion import make_schedule, space_timesteps
from jaxdiff.parity.common import Fixture, compare, compare_exact, nchw_to_nhwc
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("x_t",)
# fixture README "Tolerances observed": DDPM x_t atol 1e-4 over the whole trajectory;
# pred_xstart / log_variance atol 2e-3 (x0 amplifies eps errors by sqrt(1/abar - 1), 156 at
# t = 999); UNet outputs atol 1e-4
ATOL_X, ATOL_X0, ATOL_EPS = 1e-4, 2e-3, 1e-4


def _steps_major(a):
    """(B, K, ...) -> (K, B, ...): the fixtures' step-major layout."""
    return np.swapaxes(np.asarray(a), 0, 1)


def _gd_schedule(npz, cfg: dict, variance_type: str):
    kept = np.asarray(npz["timestep_map"])
    respacing = cfg.get("timestep_respacing", str(len(kept)))
    sched = make_schedule(
        int(cfg.get("steps", cfg.get("num_timesteps", 1000))),
        cfg.get("noise_schedule", "linear"),
        variance_type=variance_type,
        respacing=respacing if respacing not in ("", None) else None,
    )
    checks = {"timestep_map": compare_exact(sched.timestep_map, kept)}
    for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped"):
        if name in npz:
            checks[f"schedule_{name}"] = compare(sched.tables[name], npz[name], atol=1e-12)
    if "original_betas" in npz:
        base = make_schedule(sched.num_train_timesteps, cfg.get("noise_schedule", "linear"))
        checks["schedule_original_betas"] = compare(base.betas, npz["original_betas"], atol=1e-12)
    return sched, checks


def _diffusers_schedule(npz, cfg: dict):
    sc = cfg.get("scheduler_config", cfg)
    if sc.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"prediction_type {sc['prediction_type']!r} is not supported")
    if sc.get("thresholding"):
        raise ValueError("diffusers dynamic thresholding is not supported")
    timesteps = np.asarray(npz["timesteps"])
    n, t_train = len(timesteps), int(sc.get("num_train_timesteps", 1000))
    spacing, offset = sc.get("timestep_spacing", "leading"), int(sc.get("steps_offset", 0))
    variance = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}.get(
        sc.get("variance_type", "fixed_small"), sc.get("variance_type", "fixed_small")
    )
    if spacing not in ("leading", "trailing") or offset != 0:
        raise ValueError(f"diffusers timestep_spacing {spacing!r} with steps_offset {offset}")
    kept = np.asarray(space_timesteps(t_train, f"{spacing}{n}"))
    abar = np.asarray(npz["alphas_cumprod"], np.float64)
    sched = make_schedule(
        t_train,
        alphas_cumprod=abar,
        variance_type=variance,
        respacing=f"{spacing}{n}",
        convention="diffusers",
    )
    ours = make_schedule(
        t_train,
        sc.get("beta_schedule", "linear"),
        sc.get("beta_start"),
        sc.get("beta_end"),
        schedule_dtype="float32",
    )
    prev = np.concatenate([kept[::-1][1:], [-1]])
    checks = {
        "timesteps": compare_exact(kept[::-1], timesteps),
        # leading/trailing: diffusers' previous timestep is the next kept one (else not a chain)
        "prev_timesteps": compare_exact(
            prev, np.where(npz["prev_timesteps"] < 0, -1, npz["prev_timesteps"])
        ),
        "schedule_alphas_cumprod_float32": compare(ours.train_alphas_cumprod, abar, atol=1e-6),
    }
    return sched, checks, bool(sc.get("clip_sample", True)), float(sc.get("clip_sample_range", 1))


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, None, dtype, trajectory=TRAJECTORY)
    npz, cfg = fx.arrays, fx.config
    with fx.context():
        if "timestep_map" in npz:
            for flag in ("rescale_timesteps", "predict_xstart", "use_kl"):
                if cfg.get(flag):
                    raise ValueError(f"{fx.path}: {flag}=True is not supported")
            vt = (
                "learned_range"
                if cfg.get("learn_sigma")
                else ("fixed_small" if cfg.get("sigma_small") else "fixed_large")
            )
            sched, checks = _gd_schedule(npz, cfg, vt)
            clip, clip_range = bool(cfg.get("clip_denoised", True)), 1.0
            name = cfg.get("model")
        elif "timesteps" in npz:
            sched, checks, clip, clip_range = _diffusers_schedule(npz, cfg)
            m = re.search(r"unet=(\w+)", cfg.get("pipeline", ""))
            name = cfg.get("model") or (m.group(1) if m else None)
        else:
            raise ValueError(f"{fx.path}: neither a guided-diffusion nor a diffusers trajectory")
        for key, result in checks.items():
            fx.add(key, result)
            fx.compared.add(key.removeprefix("schedule_"))
        if clip_range != 1.0:
            raise ValueError(f"{fx.path}: clip_sample_range {clip_range} (only 1.0 supported)")
        fn, params, meta = fx.model(name, model_dir)
        x_T = fx.nhwc("x_T")
        b, shape, k = x_T.shape[0], x_T.shape[1:], sched.num_steps
        noise = fx.nhwc("noise")
        if noise.shape[0] == k - 1:  # diffusers draws nothing at the last step
            noise = np.concatenate([noise, np.zeros_like(noise[:1])])
        if noise.shape[0] != k:
            raise ValueError(f"{fx.path}: noise has {noise.shape[0]} steps for {k} sampling steps")
        sample = get_sampler("ddpm")(
            fn, sched, image_shape=shape, clip_denoised=clip, dtype=fx.jdtype, keep_trajectory=True
        )
        rep = {"x_T": fx.jnp(x_T), "noise": fx.jnp(np.swapaxes(noise, 0, 1))}
        keys = jax.random.split(jax.random.key(0), b)
        traj = jax.tree.map(
            _steps_major, jax.jit(batched(sample))(params, keys, None, None, None, rep).trajectory
        )
    f64 = cfg.get("f64_replay_max_abs_diff_x_t_per_step")
    fx.check("x_t", traj["x"], ATOL_X, nhwc=True, per_step=True, f64=f64)
    fx.check("pred_xstart", traj["x0_hat"], ATOL_X0, nhwc=True, per_step=True)
    fx.check("model_output", traj["eps"], ATOL_EPS, nhwc=True, per_step=True)
    if "log_variance" in npz and sched.learned_variance:
        want = nchw_to_nhwc(npz["log_variance"])
        if want.shape[0] != k and want.shape[0] % k == 0:  # recorded more than once: same values
            want = want[:k]
        fx.check("log_variance", traj["log_variance"], ATOL_X0, ref=want)
    for name in ("step_index", "prev_timesteps"):
        if name in npz and name not in fx.compared:
            fx.skip(name, "the loop's own counter (the kept timesteps are compared)")
    return fx.report("ddpm", num_steps=k, batch=b, variance_type=sched.variance_type)
