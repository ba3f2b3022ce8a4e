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

import contextlib
import json
import pathlib
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule, space_timesteps
from jaxdiff.parity.common import compare, nchw_to_nhwc, report, sidecar
from jaxdiff.samplers import batched, get_sampler

ATOL_X = 1e-3  # x_t over the whole trajectory, float32 (fixture README: observed <= 1e-5)
ATOL_X0 = 5e-3  # x0_hat amplifies eps errors by sqrt(1/abar - 1) (156 at t = 999)
ATOL_LOGVAR = 1e-3
ATOL_F64 = 1e-4  # float64 replay vs the float32 reference: the reference's own float32 noise


def run_dtype(dtype: str):
    """Context for a float32 or float64 replay (float64 enables x64 for its duration)."""
    if dtype == "float64":
        return jnp.float64, jax.enable_x64(True)
    if dtype == "float32":
        return jnp.float32, contextlib.nullcontext()
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def load_model(npz_path, model_dir, name: str | None, dtype):
    """(model_fn, params, meta): from `model_dir`, else by converting `name` found beside the
    fixture (an ADM `<name>.pt`, with `<name>.json` kwargs when present, or a diffusers folder)
    into a temporary folder with the converter's Python API."""
    from jaxdiff.models import load_pretrained

    npz_path = pathlib.Path(npz_path)
    if model_dir is None:
        model_dir = _convert_beside(npz_path, name)
    model, params, meta = load_pretrained(model_dir, dtype=dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return (lambda p, x, t: model.apply({"params": p}, x, t)), params, meta


_CONVERTED: dict = {}


def _convert_beside(npz_path: pathlib.Path, name: str | None) -> str:
    if not name:
        raise FileNotFoundError(f"{npz_path}: the sidecar names no model; pass --model DIR")
    folder = npz_path.parent
    pt, sub = folder / f"{name}.pt", folder / name
    if (sub / "config.json").is_file():
        src, config = sub, None
    elif pt.is_file():
        src = pt
        kwargs = folder / f"{name}.json"
        config = kwargs if kwargs.is_file() and "kwargs" in json.loads(kwargs.read_text()) else None
    else:
        raise FileNotFoundError(
            f"{npz_path}: model {name!r} not found beside it ({pt.name} or {name}/config.json); "
            "pass --model CONVERTED_DIR (python -m convert_weights SRC --out DIR)"
        )
    key = (str(src), str(config))
    if key not in _CONVERTED:
        from jaxdiff.convert.core import convert

        out = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-parity-")) / name
        convert(src, out, config=config, progress=False)
        _CONVERTED[key] = str(out)
    return _CONVERTED[key]


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
    checks = {"timestep_map": _exact(sched.timestep_map, kept)}
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
        "timesteps": _exact(kept[::-1], timesteps),
        # leading/trailing: diffusers' previous timestep is the next kept one (else not a chain)
        "prev_timesteps": _exact(
            prev, np.where(npz["prev_timesteps"] < 0, -1, npz["prev_timesteps"])
        ),
        "schedule_alphas_cumprod_float32": compare(ours.train_alphas_cumprod, abar, atol=1e-6),
    }
    return sched, checks, bool(sc.get("clip_sample", True)), float(sc.get("clip_sample_range", 1))


def _exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    return {"pass": ok, "got": got.tolist()[:8], "want": want.tolist()[:8]}


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    npz = dict(np.load(npz_path))
    cfg = sidecar(npz_path)
    jdtype, ctx = run_dtype(dtype)
    with ctx, jax.default_matmul_precision("highest"):
        if "timestep_map" in npz:
            for flag in ("rescale_timesteps", "predict_xstart", "use_kl"):
                if cfg.get(flag):
                    raise ValueError(f"{npz_path}: {flag}=True is not supported")
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
            raise ValueError(f"{npz_path}: neither a guided-diffusion nor a diffusers trajectory")
        if clip_range != 1.0:
            raise ValueError(f"{npz_path}: clip_sample_range {clip_range} (only 1.0 supported)")
        fn, params, meta = load_model(npz_path, model_dir, name, jdtype)
        x_T = nchw_to_nhwc(npz["x_T"])
        b, shape, k = x_T.shape[0], x_T.shape[1:], sched.num_steps
        noise = nchw_to_nhwc(npz["noise"])
        if noise.shape[0] == k - 1:  # diffusers draws nothing at the last step
            noise = np.concatenate([noise, np.zeros_like(noise[:1])])
        if noise.shape[0] != k:
            raise ValueError(f"{npz_path}: noise has {noise.shape[0]} steps for {k} sampling steps")
        sample = get_sampler("ddpm")(
            fn, sched, image_shape=shape, clip_denoised=clip, dtype=jdtype, keep_trajectory=True
        )
        replay_in = {
            "x_T": jnp.asarray(x_T, jdtype),
            "noise": jnp.asarray(np.swapaxes(noise, 0, 1), jdtype),
        }
        res = jax.jit(batched(sample))(
            params, jax.random.split(jax.random.key(0), b), None, None, None, replay_in
        )
        traj = jax.tree.map(np.asarray, res.trajectory)
    atol_x = ATOL_F64 if dtype == "float64" else ATOL_X
    arrays = dict(checks)
    arrays["x_t"] = compare(
        _steps_major(traj["x"]), nchw_to_nhwc(npz["x_t"]), atol_x, per_step=True
    )
    arrays["pred_xstart"] = compare(
        _steps_major(traj["x0_hat"]), nchw_to_nhwc(npz["pred_xstart"]), ATOL_X0, per_step=True
    )
    if "model_output" in npz:
        arrays["model_output"] = compare(
            _steps_major(traj["eps"]), nchw_to_nhwc(npz["model_output"]), ATOL_X, per_step=True
        )
    if "log_variance" in npz and sched.learned_variance:
        want = nchw_to_nhwc(npz["log_variance"])
        if want.shape[0] != k and want.shape[0] % k == 0:  # recorded more than once: same values
            want = want[:k]
        arrays["log_variance"] = compare(_steps_major(traj["log_variance"]), want, ATOL_LOGVAR)
    extra = {"dtype": dtype, "num_steps": k, "batch": b, "variance_type": sched.variance_type}
    for key in ("f64_replay_max_abs_diff_x_t_per_step",):
        if key in cfg:
            extra["reference_" + key] = cfg[key]
    return report(npz_path, "ddpm", arrays, **extra)
