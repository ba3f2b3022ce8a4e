"""Gaussian diffusion algebra: posterior coefficients, eps <-> x0 <-> score, variance types.

Numbers only (REFERENCE 1.2-1.5). `posterior_tables` builds float64 tables from alpha-bar; the
functions below act on `c = schedule.gather(k, dtype)`, the tables' entries at one step, so the
same code serves float32 and float64 and any respacing.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

VARIANCE_FLOOR = 1e-20  # diffusers' clamp of the posterior variance


def posterior_tables(alphas_cumprod, convention: str = "guided_diffusion") -> dict:
    """Every per-step table a sampler needs, float64, from the (respaced) alpha-bar."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    betas = 1.0 - abar / abar_prev
    alphas = 1.0 - betas
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    floored = np.maximum(post_var, VARIANCE_FLOOR)
    if convention == "diffusers" or abar.shape[0] == 1:
        post_logvar = np.log(floored)
        large_var = betas.copy()
    else:
        # guided-diffusion: entry 0 (variance 0) replaced by entry 1, so the log stays finite.
        post_logvar = np.log(np.append(post_var[1], post_var[1:]))
        large_var = np.append(post_var[1], betas[1:])
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_logvar,
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        "log_betas": np.log(betas),
        "large_log_variance": np.log(large_var),
        # x_{t-1} = (x_t - beta/sqrt(1-abar) eps)/sqrt(alpha): the unclipped eps-form mean (SDEdit).
        "eps_mean_coef": betas / np.sqrt(1.0 - abar),
        "sqrt_recip_alphas": 1.0 / np.sqrt(alphas),
    }


def x0_from_eps(c: dict, x_t, eps):
    """x0_hat = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (guided-diffusion's form)."""
    return c["sqrt_recip_alphas_cumprod"] * x_t - c["sqrt_recipm1_alphas_cumprod"] * eps


def eps_from_x0(c: dict, x_t, x0):
    return (c["sqrt_recip_alphas_cumprod"] * x_t - x0) / c["sqrt_recipm1_alphas_cumprod"]


def score_from_eps(c: dict, eps):
    """grad log p_t(x_t) = -eps / sqrt(1 - abar)."""
    return -eps / c["sqrt_one_minus_alphas_cumprod"]


def eps_from_score(c: dict, score):
    return -score * c["sqrt_one_minus_alphas_cumprod"]


def q_sample(c: dict, x0, noise):
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) noise."""
    return c["sqrt_alphas_cumprod"] * x0 + c["sqrt_one_minus_alphas_cumprod"] * noise


def posterior_mean(c: dict, x0, x_t):
    """Mean of q(x_{t-1} | x_t, x0)."""
    return c["posterior_mean_coef1"] * x0 + c["posterior_mean_coef2"] * x_t


def eps_mean(c: dict, x_t, eps):
    """DDPM mean from an unclipped eps: (x_t - beta/sqrt(1-abar) eps)/sqrt(alpha)."""
    return c["sqrt_recip_alphas"] * (x_t - c["eps_mean_coef"] * eps)


def log_variance(variance_type: str, c: dict, v=None):
    """Log variance of p(x_{t-1} | x_t) for a variance type; `v` = the model's variance channels.

    learned_range: frac = (v + 1)/2 interpolates between log(beta_t) and the (clipped) posterior
    log-variance; v is not clamped (guided-diffusion does not).
    """
    if variance_type == "fixed_small":
        return c["posterior_log_variance_clipped"]
    if variance_type == "fixed_large":
        return c["large_log_variance"]
    if v is None:
        raise ValueError(f"variance_type {variance_type!r} needs the model's variance channels")
    if variance_type == "learned":
        return v
    if variance_type == "learned_range":
        min_log = c["posterior_log_variance_clipped"]
        max_log = c["log_betas"]
        frac = (v + 1) / 2
        return frac * max_log + (1 - frac) * min_log
    raise ValueError(f"unknown variance_type {variance_type!r}")


def split_model_output(out, channels: int, variance_type: str):
    """(eps, v) from a model output (..., C_out); checks C_out against the variance type."""
    learned = variance_type in ("learned_range", "learned")
    want = 2 * channels if learned else channels
    got = out.shape[-1]
    if got != want:
        kind = "eps + variance channels" if learned else "eps only"
        raise ValueError(
            f"the model outputs {got} channels but variance_type {variance_type!r} on a "
            f"{channels}-channel image needs {want} ({kind}); pick the variance type the "
            "checkpoint was trained with (meta['diffusion']['variance_type'])"
        )
    if learned:
        return out[..., :channels], out[..., channels:]
    return out, None


def t_for_sigma(train_alphas_cumprod, sigma):
    """Training index t* with sqrt((1 - abar)/abar) closest to `sigma` (Tweedie denoising, 2.1).

    Works on traced `sigma` (argmin over the table), so a sweep over noise levels stays one call.
    """
    ve = jnp.sqrt((1.0 - jnp.asarray(train_alphas_cumprod)) / jnp.asarray(train_alphas_cumprod))
    return jnp.argmin(jnp.abs(ve - sigma)).astype(jnp.int32)


def ddim_coefficients(abar_t, abar_next, eta):
    """(c1, c2) of the generalized DDIM step (Song, Meng, Ermon 2021, eq. 12 and 16):
    c1 = eta sqrt((1 - abar_t/abar_next)(1 - abar_next)/(1 - abar_t)) is the noise std (eta = 1:
    the DDPM posterior std), c2 = sqrt(1 - abar_next - c1^2) the weight of eps. The expression
    order is that of RED-diff algos/ddim.py, so float32 values reproduce the official ones."""
    c1 = jnp.sqrt((1 - abar_t / abar_next) * (1 - abar_next) / (1 - abar_t)) * eta
    c2 = jnp.sqrt(jnp.maximum((1 - abar_next) - c1**2, 0.0))
    return c1, c2


def ddim_step(x0, eps, abar_t, abar_next, eta, z):
    """x_next = sqrt(abar_next) x0 + c1 z + c2 eps (DDIM; eta = 0 deterministic, eta = 1 the
    DDPM fixed_small ancestral step). Shared by DDIM, PiGDM and the other DDIM-style samplers."""
    c1, c2 = ddim_coefficients(abar_t, abar_next, eta)
    return jnp.sqrt(abar_next) * x0 + c1 * z + c2 * eps
