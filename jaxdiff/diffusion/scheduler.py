"""diffusers' discrete schedulers (DDIM, DDPM) from a `scheduler_config.json`: the tables and
one update each, numbers only.

A Stable Diffusion folder ships one scheduler config (PNDM, DDIM, ...); every field that shapes
the numbers is read from it: `beta_schedule` (linear, scaled_linear, squaredcos_cap_v2,
trained_betas), `rescale_betas_zero_snr`, `timestep_spacing` (leading, trailing, linspace),
`steps_offset`, `set_alpha_to_one`, `prediction_type` (epsilon, v_prediction, sample),
`clip_sample` / `clip_sample_range`. Missing fields take DDIMScheduler's defaults, as
`DDIMScheduler.from_config(other_config)` does. The tables are float32, built as torch builds
them (torch.linspace in float32, cumprod accumulated in double), and the updates run in float32
on those entries, so a replay matches the reference step for step.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# DDIMScheduler.__init__ defaults (diffusers schedulers/scheduling_ddim.py)
DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def normalize_config(config: dict) -> dict:
    """A scheduler_config.json -> the fields used here, defaults filled, values checked."""
    cfg = {k: config.get(k, v) for k, v in DEFAULTS.items()}
    if cfg["trained_betas"] is None and cfg["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(
            f"scheduler config: beta_schedule={cfg['beta_schedule']!r}; known: {BETA_SCHEDULES}"
        )
    if cfg["timestep_spacing"] not in SPACINGS:
        raise ValueError(
            f"scheduler config: timestep_spacing={cfg['timestep_spacing']!r}; known: {SPACINGS}"
        )
    if cfg["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler config: prediction_type={cfg['prediction_type']!r}; "
            f"known: {PREDICTION_TYPES}"
        )
    if cfg["thresholding"]:
        raise ValueError(
            "scheduler config: thresholding=true (dynamic thresholding) is not supported"
        )
    if int(cfg["num_train_timesteps"]) < 2:
        raise ValueError(f"scheduler config: num_train_timesteps={cfg['num_train_timesteps']}")
    return cfg


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32) on the CPU bit for bit: a float32 step,
    the first half counted up from `start`, the second half down from `end`, each value one
    fused multiply-add (one rounding; emulated in float64, where the product is exact)."""
    start, end = np.float32(start), np.float32(end)
    step = np.float32((end - start) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    up = np.float64(start) + np.float64(step) * i
    down = np.float64(end) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, up, down).astype(np.float32)


def betas(config: dict) -> np.ndarray:
    """The training betas, float32."""
    cfg = normalize_config(config)
    t = int(cfg["num_train_timesteps"])
    if cfg["trained_betas"] is not None:
        out = np.asarray(cfg["trained_betas"], dtype=np.float32)
        if out.shape != (t,):
            raise ValueError(f"scheduler config: {out.size} trained_betas for {t} timesteps")
    elif cfg["beta_schedule"] == "linear":
        out = torch_linspace_f32(cfg["beta_start"], cfg["beta_end"], t)
    elif cfg["beta_schedule"] == "scaled_linear":  # the latent diffusion schedule
        out = torch_linspace_f32(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, t) ** 2
    else:  # squaredcos_cap_v2: betas_for_alpha_bar with the cosine alpha-bar

        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        out = np.array([min(1 - abar((i + 1) / t) / abar(i / t), 0.999) for i in range(t)])
        out = out.astype(np.float32)
    if cfg["rescale_betas_zero_snr"]:
        out = rescale_zero_terminal_snr(out)
    return out.astype(np.float32)


def rescale_zero_terminal_snr(b: np.ndarray) -> np.ndarray:
    """diffusers' rescale_zero_terminal_snr (Lin et al. 2023): the last step has zero SNR."""
    sqrt_ab = np.sqrt(np.cumprod((np.float32(1.0) - b).astype(np.float64)).astype(np.float32))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab.astype(np.float32) ** 2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return (1 - alphas).astype(np.float32)


def alphas_cumprod(config: dict) -> np.ndarray:
    """prod(1 - beta), float32 (torch.cumprod on float32 accumulates in double on the CPU)."""
    alphas = (np.float32(1.0) - betas(config)).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def final_alpha_cumprod(config: dict) -> np.float32:
    """alpha-bar after the last DDIM step: 1 with set_alpha_to_one, else alphas_cumprod[0]."""
    cfg = normalize_config(config)
    return np.float32(1.0) if cfg["set_alpha_to_one"] else alphas_cumprod(cfg)[0]


def inference_timesteps(config: dict, num_steps: int) -> np.ndarray:
    """`set_timesteps(num_steps)`'s timesteps, descending int64 (DDIM and DDPM agree)."""
    cfg = normalize_config(config)
    t = int(cfg["num_train_timesteps"])
    if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= t:
        raise ValueError(f"num_steps must be an int in [1, {t}], got {num_steps!r}")
    spacing = cfg["timestep_spacing"]
    if spacing == "linspace":
        steps = np.linspace(0, t - 1, num_steps).round()[::-1].copy()
    elif spacing == "leading":
        steps = (np.arange(0, num_steps) * (t // num_steps)).round()[::-1].copy()
        steps += int(cfg["steps_offset"])
    else:
        steps = np.round(np.arange(t, 0, -t / num_steps)) - 1
    return steps.astype(np.int64)


def ddim_tables(config: dict, num_steps: int) -> dict[str, np.ndarray]:
    """Per step k: `timesteps`, alpha-bar at t (`alpha`) and at DDIM's previous step
    t - T // num_steps (`alpha_prev`; the final alpha-bar below 0), as `DDIMScheduler.step`."""
    cfg = normalize_config(config)
    ac = alphas_cumprod(cfg)
    ts = inference_timesteps(cfg, num_steps)
    prev = ts - int(cfg["num_train_timesteps"]) // num_steps
    final = final_alpha_cumprod(cfg)
    alpha_prev = np.where(prev >= 0, ac[np.clip(prev, 0, None)], final).astype(np.float32)
    return {"timesteps": ts.astype(np.int32), "alpha": ac[ts], "alpha_prev": alpha_prev}


def ddpm_tables(config: dict, num_steps: int) -> dict[str, np.ndarray]:
    """Per step k: `timesteps`, `alpha`, and `alpha_prev` at the NEXT timestep of the list
    (1 after the last), as `DDPMScheduler.previous_timestep` with set_timesteps."""
    cfg = normalize_config(config)
    ac = alphas_cumprod(cfg)
    ts = inference_timesteps(cfg, num_steps)
    alpha_prev = np.append(ac[ts[1:]], np.float32(1.0)).astype(np.float32)
    return {"timesteps": ts.astype(np.int32), "alpha": ac[ts], "alpha_prev": alpha_prev}


def x0_and_eps(out, z, alpha, prediction_type: str):
    """The network output at alpha-bar `alpha` -> (predicted x0, predicted eps)."""
    a = jnp.asarray(alpha, z.dtype)
    sa, s1a = jnp.sqrt(a), jnp.sqrt(1 - a)
    if prediction_type == "epsilon":
        return (z - s1a * out) / sa, out
    if prediction_type == "v_prediction":
        return sa * z - s1a * out, sa * out + s1a * z
    if prediction_type == "sample":
        return out, (z - sa * out) / s1a
    raise ValueError(f"prediction_type {prediction_type!r}; known: {PREDICTION_TYPES}")


def _clip(x0, cfg):
    if cfg["clip_sample"]:
        r = float(cfg["clip_sample_range"])
        return jnp.clip(x0, -r, r)
    return x0


def ddim_step(config: dict, out, z, alpha, alpha_prev, eta=0.0, noise=None):
    """`DDIMScheduler.step(out, t, z, eta).prev_sample` with alpha-bars gathered per step
    (use_clipped_model_output=False: eps is the network's, x0 is clipped)."""
    cfg = normalize_config(config)
    x0, eps = x0_and_eps(out, z, alpha, cfg["prediction_type"])
    x0 = _clip(x0, cfg)
    a, ap = jnp.asarray(alpha, z.dtype), jnp.asarray(alpha_prev, z.dtype)
    variance = (1 - ap) / (1 - a) * (1 - a / ap)
    std = jnp.asarray(eta, z.dtype) * jnp.sqrt(variance)
    # 1 - ap - std^2 is exactly 0 at eta = 1 from a zero-SNR start: keep rounding off sqrt(< 0)
    prev = jnp.sqrt(ap) * x0 + jnp.sqrt(jnp.maximum(1 - ap - std**2, 0)) * eps
    if noise is not None:
        prev = prev + std * noise
    return prev


def ddpm_step(config: dict, out, z, alpha, alpha_prev, noise, last):
    """`DDPMScheduler.step(out, t, z).prev_sample` (fixed_small variance, no noise at the last
    step: `last` true there)."""
    cfg = normalize_config(config)
    x0, _ = x0_and_eps(out, z, alpha, cfg["prediction_type"])
    x0 = _clip(x0, cfg)
    a, ap = jnp.asarray(alpha, z.dtype), jnp.asarray(alpha_prev, z.dtype)
    alpha_t = a / ap
    beta_t = 1 - alpha_t
    mean = (jnp.sqrt(ap) * beta_t / (1 - a)) * x0 + (jnp.sqrt(alpha_t) * (1 - ap) / (1 - a)) * z
    variance = jnp.maximum((1 - ap) / (1 - a) * beta_t, 1e-20)
    return mean + jnp.where(last, 0.0, jnp.sqrt(variance)) * noise
