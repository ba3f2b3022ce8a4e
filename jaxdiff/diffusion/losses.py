"""The variational-bound term that trains a learned variance (Nichol & Dhariwal 2021, improved
DDPM; guided-diffusion's `_vb_terms_bpd`).

The simple eps loss says nothing about sigma, so a model whose variance is learned (ADM's
`learn_sigma`, variance types learned_range / learned) also minimises L_t of the variational
bound: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0, and the discretised Gaussian
decoder's negative log-likelihood of x0 at t = 0, both in bits per dimension. The hybrid loss is
`mse + vb` with the mean stop-gradded inside vb, so the bound shapes sigma and leaves the mean to
the simple loss; guided-diffusion's RESCALED_MSE scales vb by num_timesteps / 1000.

Functions act on `c`, the schedule's tables at each image's step broadcast over NHWC
(`jaxdiff.training.per_image_tables`), like `jaxdiff.diffusion.gaussian`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxdiff.diffusion import gaussian


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )  # fmt: skip


def approx_standard_normal_cdf(x):
    """Phi(x) by the tanh approximation guided-diffusion uses (kept for parity of the bound)."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) of 8-bit data in [-1, 1] (bin width 2/255) under N(means, e^(2 log_scales)); the
    two edge bins take the tails, so the bins' probabilities sum to one."""
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def vb_terms_bpd(c: dict, variance_type: str, x0, x_t, t, eps_hat, v):
    """Per-image L_t in bits/dim: the KL to the true posterior where t > 0, the decoder NLL where
    t == 0. `eps_hat`, `v`: the model's eps and variance channels (stop-grad eps_hat yourself
    for the hybrid loss); the model mean is the posterior mean at the unclipped x0 estimate."""
    true_mean = gaussian.posterior_mean(c, x0, x_t)
    true_logvar = c["posterior_log_variance_clipped"]
    mean = gaussian.posterior_mean(c, gaussian.x0_from_eps(c, x_t, eps_hat), x_t)
    logvar = gaussian.log_variance(variance_type, c, v)
    axes = tuple(range(1, x0.ndim))
    kl = jnp.mean(normal_kl(true_mean, true_logvar, mean, logvar), axis=axes) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)
    nll = jnp.mean(nll, axis=axes) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)
