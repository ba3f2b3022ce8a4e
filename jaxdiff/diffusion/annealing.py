"""DAPS noise levels: the EDM 'poly-rho' sigma grids and the VP-model-as-VE-denoiser coefficients.

DAPS (Zhang et al., CVPR 2025; docs/methods.md) runs its outer loop on an EDM/VE state
x = x0 + sigma n (no sqrt(abar) scaling) and calls a DDPM eps-network through EDM's VPPrecond
(DAPS repo model/precond.py). Numbers only: no model, no sampler.

Grids (DAPS repo cores/scheduler.py EDMScheduler, timestep 'poly-rho'):

    t_j = (sigma_max^(1/rho) + (j/N) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  j = 0..N

The annealing grid is built in float64 (numpy) and cast to the compute dtype, with its last point
replaced by 0 (Scheduler.discretize): sigma_min is never a noise level, and the N steps run at
t_0..t_{N-1}. The inner probability-flow ODE grid of each step is recomputed from that step's
(float32) sigma in the compute dtype, as the official code does with a 0-d float32 tensor.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def poly_grid(num_steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> np.ndarray:
    """The float64 EDM grid t_0 = sigma_max .. t_N = sigma_min (N + 1 points)."""
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not (0 < float(sigma_min) < float(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not float(rho) > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    r = np.linspace(0.0, 1.0, n + 1)
    hi, lo = float(sigma_max) ** (1.0 / rho), float(sigma_min) ** (1.0 / rho)
    return (hi + r * (lo - hi)) ** rho


def annealing_sigmas(
    num_steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0, dtype=np.float32
) -> np.ndarray:
    """The noise levels of the N annealing steps, then 0: [t_0, ..., t_{N-1}, 0] in `dtype`.

    Step i anneals from sigma_i to sigma_{i+1}; the last step re-noises with weight 0, so the
    sample is the last step's Langevin output (DAPS repo sampler.py DAPS.sample)."""
    t = poly_grid(num_steps, sigma_max, sigma_min, rho).astype(dtype)
    t[-1] = 0
    return t


def ode_grids(sigmas, num_steps: int, sigma_min: float, rho: float = 7.0, dtype=np.float32):
    """The probability-flow ODE grid of every annealing step: (len(sigmas), K + 1), from each
    sigma down to `sigma_min`, in `dtype`.

    The official code builds it from a 0-d float32 tensor, so every operation rounds to float32
    (powers and logs correctly rounded); `_rounded` reproduces that op by op (t_0 is then
    99.99998474 for sigma 100, bit for bit the reference's grid)."""
    k = int(num_steps)
    if k < 1:
        raise ValueError(f"ODE num_steps must be >= 1, got {num_steps}")
    rd = _rounded(dtype)
    r = np.linspace(0.0, 1.0, k + 1)
    out = []
    for s in np.asarray(sigmas, np.float64):
        hi = rd(rd(s) ** (1.0 / rho))
        lo = rd(float(sigma_min) ** (1.0 / rho))
        base = rd(hi + rd(r * rd(lo - hi)))
        out.append(rd(base**rho))
    return np.stack(out).astype(dtype)


# EDM VPPrecond defaults (DAPS repo model/precond.py): the continuous VP-SDE of the linear DDPM
# schedule beta_t = 1e-4 .. 0.02 over M = 1000 steps: beta(t) = beta_min + beta_d t, t in [0, 1].
VP_BETA_MIN = 0.1
VP_BETA_D = 19.9
VP_M = 1000


def vp_input_scale(sigma, dtype=np.float32) -> np.ndarray:
    """c_in = 1 / sqrt(sigma^2 + 1): the VE state x0 + sigma n times c_in is the VP state
    sqrt(abar) x0 + sqrt(1 - abar) n with abar = 1 / (1 + sigma^2)."""
    rd = _rounded(dtype)
    return rd(1.0 / rd(np.sqrt(rd(rd(rd(sigma) ** 2) + 1.0))))


def vp_timestep(
    sigma, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D, m: int = VP_M, dtype=np.float32
) -> np.ndarray:
    """c_noise = (M - 1) t_VP(sigma): the FRACTIONAL network timestep of the continuous VP-SDE,
    t_VP = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d (VPPrecond
    .sigma_inv), in VPPrecond's op order. Not rounded to a discrete DDPM index (sigma 100 ->
    956.15, where the discrete schedule's t = 999 is sigma ~157)."""
    rd = _rounded(dtype)
    s2 = rd(rd(sigma) ** 2)
    v = rd(rd(2 * beta_d) * rd(np.log(rd(1.0 + s2))))
    t = rd(rd(rd(np.sqrt(rd(rd(beta_min**2) + v))) - rd(beta_min)) / rd(beta_d))
    return rd((m - 1) * t)


def _rounded(dtype):
    """x -> x rounded to `dtype` (computed in float64 first: one rounding per operation)."""
    dtype = np.dtype(dtype)
    return lambda x: np.asarray(x, np.float64).astype(dtype).astype(np.float64)


def vp_alphas_cumprod(timestep, beta_min: float = VP_BETA_MIN, beta_d: float = VP_BETA_D, m=VP_M):
    """abar at a (fractional) network timestep: exp(-(beta_min t + beta_d t^2 / 2)), t = ts/(M-1);
    the inverse of `vp_timestep` (abar = 1 / (1 + sigma^2)). For exact test denoisers."""
    t = jnp.asarray(timestep) / (m - 1)
    return jnp.exp(-(beta_min * t + 0.5 * beta_d * t**2))


__all__ = [
    "VP_BETA_D",
    "VP_BETA_MIN",
    "VP_M",
    "annealing_sigmas",
    "ode_grids",
    "poly_grid",
    "vp_alphas_cumprod",
    "vp_input_scale",
    "vp_timestep",
]
