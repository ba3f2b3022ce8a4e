"""EDM's view of a VP (DDPM) eps-network: the VE noise level sigma, the preconditioning that
turns the network into a denoiser D(x; sigma), and EDM's sigma grid (Karras et al., NeurIPS
2022, Table 1; the EDM code's VPPrecond and its sampler's time steps, as PnP-DM's
pnpdm/models/edm/edm.py and samplers/pnp_edm/denoiser_edm.py use them). Numbers only.

A VP state x_vp = sqrt(abar) x0 + sqrt(1 - abar) n is the VE state x = x0 + sigma n scaled by
c_in = sqrt(abar) = 1 / sqrt(1 + sigma^2), sigma = sqrt((1 - abar) / abar), so

    D(x; sigma) = x - sigma eps(c_in x, c_noise),   c_noise = (M - 1) t_VP(sigma)

with t_VP the continuous VP-SDE time of sigma (beta(t) = beta_min + beta_d t, the linear DDPM
schedule 1e-4 .. 0.02 over M = 1000 steps): a FRACTIONAL network timestep. c_in and c_noise of a
static grid come from `annealing.vp_input_scale` / `annealing.vp_timestep` (VPPrecond's float32
op order); `vp_precond` gives them for a traced sigma.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.annealing import VP_BETA_D, VP_BETA_MIN, VP_M


def vp_sigma(t, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN):
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), float64 (expm1: no cancellation)."""
    t = np.asarray(t, np.float64)
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_range(
    beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN, epsilon_t: float = 1e-3
) -> tuple[float, float]:
    """VPPrecond's (sigma_min, sigma_max) = (sigma(epsilon_t), sigma(1)): the noise levels the
    network was trained on (0.0105 and 152 for the defaults). The EDM code evaluates them in
    float32 (0.010483843 instead of 0.010485993); a replay passes the recorded value."""
    return float(vp_sigma(epsilon_t, beta_d, beta_min)), float(vp_sigma(1.0, beta_d, beta_min))


def edm_sigma_steps(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0):
    """EDM's time steps (discretization 'edm', schedule 'linear': t = sigma), float64, then 0:
    t_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    i = 0 .. N - 1, and t_N = 0 (N + 1 points)."""
    n = int(num_steps)
    if n < 2:
        raise ValueError(f"EDM grid: num_steps must be >= 2, got {num_steps}")
    if not 0 < float(sigma_min) < float(sigma_max):
        raise ValueError(f"EDM grid: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not float(rho) > 0:
        raise ValueError(f"EDM grid: rho must be > 0, got {rho}")
    i = np.arange(n, dtype=np.float64)
    hi, lo = float(sigma_max) ** (1 / rho), float(sigma_min) ** (1 / rho)
    return np.append((hi + i / (n - 1) * (lo - hi)) ** rho, 0.0)


def vp_precond(sigma, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN, m: int = VP_M):
    """(c_in, c_noise) for a traced sigma (jnp, in sigma's dtype), VPPrecond's expressions."""
    c_in = 1 / jnp.sqrt(sigma**2 + 1)
    t = (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log(1 + sigma**2)) - beta_min) / beta_d
    return c_in, (m - 1) * t


def vp_denoise(model_fn, params, x, sigma, c_in, c_noise):
    """D(x; sigma) = x + (-sigma) eps(c_in x, c_noise) for ONE image (VPPrecond.forward: c_skip
    1, c_out -sigma; the eps channels of a learned-variance output)."""
    out = model_fn(params, (c_in * x)[None], jnp.reshape(c_noise, (1,)))[0]
    if out.shape[:-1] != x.shape[:-1] or out.shape[-1] < x.shape[-1]:
        raise ValueError(f"the model maps an image {x.shape} to {out.shape}")
    return x + (-sigma) * out[..., : x.shape[-1]]


def check_vp_schedule(schedule, beta_min: float, beta_d: float, m: int, where: str) -> None:
    """VPPrecond reads the model on the continuous VP-SDE (beta_min, beta_d); a model trained on
    another schedule (cosine) would get the wrong timestep for each sigma: refuse it (the
    schedule's training alpha-bar against the continuous one in log sigma, from index 10)."""
    abar = getattr(schedule, "train_alphas_cumprod", None)
    if abar is None or len(abar) <= 10:
        return
    i = np.arange(10, len(abar))
    cont = np.exp(-(beta_min * i / (m - 1) + 0.5 * beta_d * (i / (m - 1)) ** 2))
    log_sigma = lambda a: 0.5 * np.log((1 - a) / a)  # noqa: E731
    gap = float(np.max(np.abs(log_sigma(np.asarray(abar)[i]) - log_sigma(cont))))
    if gap > 0.25:
        raise ValueError(
            f"{where}: the model's noise schedule is not the continuous VP-SDE (beta_min "
            f"{beta_min}, beta_d {beta_d}) that VPPrecond assumes (log-sigma gap {gap:.2f}); pass "
            "vp_beta_min / vp_beta_d matching it (the linear DDPM schedule is within 0.05)"
        )


__all__ = [
    "check_vp_schedule",
    "edm_sigma_steps",
    "vp_denoise",
    "vp_precond",
    "vp_sigma",
    "vp_sigma_range",
]
