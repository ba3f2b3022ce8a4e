"""A Gaussian prior x0 ~ N(mu, Sigma) whose eps / score is exact, for closed-form sampler tests.

With x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, x_t ~ N(sqrt(abar) mu, abar Sigma + (1 - abar) I),
so the optimal eps prediction is eps*(x_t) = sqrt(1 - abar) P_t (x_t - sqrt(abar) mu) with
P_t = (abar Sigma + (1 - abar) I)^-1, and
E[x0 | x_t] = mu + sqrt(abar) Sigma P_t (x_t - sqrt(abar) mu).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


class GaussianPrior:
    def __init__(self, shape, train_alphas_cumprod, seed: int = 0, corr: float = 0.6):
        self.shape = tuple(shape)
        d = int(np.prod(shape))
        rng = np.random.default_rng(seed)
        self.mu = rng.uniform(-0.4, 0.4, d)
        std = rng.uniform(0.15, 0.5, d)
        idx = np.arange(d)
        r = corr ** np.abs(idx[:, None] - idx[None, :])  # AR(1) correlation along the raster
        self.cov = std[:, None] * r * std[None, :]
        self.abar = np.asarray(train_alphas_cumprod, np.float64)
        self.d = d

    def precision(self, abar):
        return np.linalg.inv(abar * self.cov + (1 - abar) * np.eye(self.d))

    def params(self, v: float | None = None, dtype=np.float32) -> dict:
        """Model params: everything is an argument (no closure constants)."""
        p = np.stack([self.precision(a) for a in self.abar])
        out = {
            "mu": self.mu.astype(dtype),
            "P": p.astype(dtype),
            "sqrt_abar": np.sqrt(self.abar).astype(dtype),
            "sqrt_1m_abar": np.sqrt(1 - self.abar).astype(dtype),
        }
        if v is not None:
            out["v"] = np.asarray(v, dtype)
        return {k: jnp.asarray(a) for k, a in out.items()}

    @staticmethod
    def model_fn(params, x, t):
        """Exact eps on (B, H, W, C); learned-variance channels `v` appended when in params."""
        b = x.shape[0]
        flat = x.reshape(b, -1)
        sa = params["sqrt_abar"][t][:, None]
        s1 = params["sqrt_1m_abar"][t][:, None]
        eps = s1 * jnp.einsum("bij,bj->bi", params["P"][t], flat - sa * params["mu"][None])
        eps = eps.reshape(x.shape)
        if "v" in params:
            eps = jnp.concatenate([eps, jnp.full_like(eps, params["v"])], axis=-1)
        return eps

    def posterior_mean_x0(self, x_t, t):
        """E[x0 | x_t] at training index t (x_t flattened, float64)."""
        a = self.abar[t]
        return self.mu + np.sqrt(a) * self.cov @ self.precision(a) @ (x_t - np.sqrt(a) * self.mu)

    def chain_moments(self, schedule, v: float | None = None, start_k=None, m0=None, c0=None):
        """Exact mean/covariance of the (unclipped) ancestral chain's output: every step is
        linear in x, so x_{k-1} = M x_k + b + std z and the moments propagate in closed form."""
        tb = schedule.tables
        d = self.d
        m = np.zeros(d) if m0 is None else m0
        c = np.eye(d) if c0 is None else c0
        start = schedule.num_steps - 1 if start_k is None else start_k
        for k in range(start, -1, -1):
            a = tb["alphas_cumprod"][k]
            p = self.precision(schedule.train_alphas_cumprod[schedule.timestep_map[k]])
            e_lin = np.sqrt(1 - a) * p
            e_off = -np.sqrt(1 - a) * p @ (np.sqrt(a) * self.mu)
            x0_lin = (
                tb["sqrt_recip_alphas_cumprod"][k] * np.eye(d)
                - tb["sqrt_recipm1_alphas_cumprod"][k] * e_lin
            )
            x0_off = -tb["sqrt_recipm1_alphas_cumprod"][k] * e_off
            mlin = tb["posterior_mean_coef1"][k] * x0_lin + tb["posterior_mean_coef2"][k] * np.eye(
                d
            )
            moff = tb["posterior_mean_coef1"][k] * x0_off
            vt = schedule.variance_type
            if vt == "fixed_small":
                lv = tb["posterior_log_variance_clipped"][k]
            elif vt == "fixed_large":
                lv = tb["large_log_variance"][k]
            else:
                frac = (v + 1) / 2
                lv = (
                    frac * tb["log_betas"][k] + (1 - frac) * tb["posterior_log_variance_clipped"][k]
                )
            m = mlin @ m + moff
            c = mlin @ c @ mlin.T + (np.exp(lv) if k > 0 else 0.0) * np.eye(d)
        return m, c

    def linear_posterior(self, a_mat, y, sigma):
        """Exact posterior of x0 given y = A x0 + sigma n: mean and covariance."""
        s = self.cov
        k = s @ a_mat.T @ np.linalg.inv(a_mat @ s @ a_mat.T + sigma**2 * np.eye(a_mat.shape[0]))
        return self.mu + k @ (y - a_mat @ self.mu), s - k @ a_mat @ s
