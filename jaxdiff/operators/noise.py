"""Measurement noise models (DPS guided_diffusion/measurements.py), on the [-1, 1] image scale.

    noise = get_noise("gaussian", sigma=0.05)
    y = noise.sample(key, Ax)              # one image's noisy measurement
    noise.log_likelihood(y, Ax)            # log p(y | Ax), summed over every entry (a scalar)

- `gaussian(sigma)`: y = Ax + sigma z. sigma = 0.05 is the official setting, on the [-1, 1] scale
  (= 0.025 on [0, 1]; DPS measurements.py, DPS issue #6). Exact log-density.
- `poisson(rate)`: DPS "version 3": x01 = clip((Ax + 1) / 2, 0, 1), N ~ Poisson(255 rate x01),
  y = clip(2 N / (255 rate) - 1, -1, 1). The log-likelihood is the Poisson pmf of the count
  N = (y + 1) / 2 * 255 rate (rounded), with the top clip (y = 1 means N >= 255 rate) as the
  upper tail P(N >= ceil(255 rate)) = gammainc(ceil(255 rate), lambda): exact for this sampler.
- `clean`: y = Ax; it has no density, so `log_likelihood` raises.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy import special

from jaxdiff.registry import Registry

NOISES: Registry = Registry("noise")


@NOISES.register("clean")
class Clean:
    """No noise."""

    name = "clean"

    def sample(self, key, Ax):
        del key
        return Ax

    def log_likelihood(self, y, Ax):
        raise NotImplementedError(
            "clean noise has no density (a point mass); use gaussian with a small sigma for a "
            "likelihood"
        )


@NOISES.register("gaussian")
class Gaussian:
    """Additive white Gaussian noise of standard deviation `sigma` on the [-1, 1] scale."""

    name = "gaussian"

    def __init__(self, sigma=0.05):
        if not sigma > 0:
            raise ValueError(f"gaussian noise: sigma must be > 0, got {sigma} (use 'clean')")
        self.sigma = float(sigma)

    def sample(self, key, Ax):
        return Ax + self.sigma * jax.random.normal(key, jnp.shape(Ax), jnp.result_type(Ax))

    def log_likelihood(self, y, Ax):
        r = y - Ax
        n = r.size
        return -0.5 * jnp.sum(r * r) / self.sigma**2 - 0.5 * n * math.log(
            2 * math.pi * self.sigma**2
        )


@NOISES.register("poisson")
class Poisson:
    """DPS Poisson noise: counts at 255 * rate photons per unit intensity of the [0, 1] image."""

    name = "poisson"

    def __init__(self, rate=1.0):
        if not rate > 0:
            raise ValueError(f"poisson noise: rate must be > 0, got {rate}")
        self.rate = float(rate)
        self.scale = 255.0 * self.rate

    def _mean_counts(self, Ax):
        return jnp.clip((Ax + 1.0) / 2.0, 0.0, 1.0) * self.scale

    def sample(self, key, Ax):
        counts = jax.random.poisson(key, self._mean_counts(Ax), jnp.shape(Ax))
        y = counts.astype(jnp.result_type(Ax)) / self.scale * 2.0 - 1.0
        return jnp.clip(y, -1.0, 1.0)

    def log_likelihood(self, y, Ax):
        lam = self._mean_counts(Ax)
        counts = jnp.round((y + 1.0) / 2.0 * self.scale)
        # k log(lam) with 0 log 0 = 0, written so that gradients stay finite (no 0/0 anywhere)
        pos = lam > 0
        log_lam = jnp.where(pos, jnp.log(jnp.where(pos, lam, 1.0)), -jnp.inf)
        k_log_lam = jnp.where(counts > 0, counts * log_lam, 0.0)
        pmf = k_log_lam - lam - special.gammaln(counts + 1.0)
        # y = 1 holds every count >= ceil(scale) (the clip): log P(N >= top) = log P(top, lam)
        top = float(math.ceil(self.scale))
        clipped = y >= 1.0
        tail = jnp.log(special.gammainc(top, jnp.where(clipped, lam, top)))
        return jnp.sum(jnp.where(clipped, tail, pmf))


def get_noise(name: str, **config):
    """Build a noise model by name: 'clean', 'gaussian' (sigma), 'poisson' (rate)."""
    return NOISES.get(name)(**config)
