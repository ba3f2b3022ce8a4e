"""The shared covariance module: its Krylov solvers against exact solves, Tweedie's covariance
against the Gaussian prior's exact posterior covariance, and the diagonal forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.samplers import covariance as cov
from tests.gaussian_prior import GaussianPrior

SHAPE = (4, 4, 1)


def _systems(n=12, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    spd = m @ m.T + n * np.eye(n)
    return spd, spd + 0.5 * rng.normal(size=(n, n)), rng.normal(size=n)


def test_solvers_reach_the_exact_solution():
    """n CG steps solve an n x n SPD system, n GMRES steps a nonsymmetric one (float64 here:
    1e-10); one GMRES step is the residual-minimizing multiple of b; CG agrees with
    jax.scipy.sparse.linalg.cg at the same iteration count."""
    spd, nonsym, b = _systems()
    with jax.enable_x64(True):
        bj = jnp.asarray(b)
        mv = lambda m: lambda v: jnp.asarray(m) @ v  # noqa: E731
        np.testing.assert_allclose(cov.cg(mv(spd), bj, 12), np.linalg.solve(spd, b), atol=1e-10)
        np.testing.assert_allclose(
            cov.gmres(mv(nonsym), bj, 12), np.linalg.solve(nonsym, b), atol=1e-10
        )
        np.testing.assert_allclose(
            cov.dense(mv(nonsym), bj), np.linalg.solve(nonsym, b), atol=1e-10
        )
        ab = nonsym @ b
        np.testing.assert_allclose(
            cov.gmres(mv(nonsym), bj, 1), (b @ ab) / (ab @ ab) * b, atol=1e-12
        )
        ref = jax.scipy.sparse.linalg.cg(mv(spd), bj, tol=0.0, maxiter=3)[0]
        np.testing.assert_allclose(cov.cg(mv(spd), bj, 3), ref, atol=1e-12)
        assert float(jnp.abs(cov.cg(mv(spd), bj, 3) - np.linalg.solve(spd, b)).max()) > 1e-6
        # a zero right-hand side stays zero (the eps floors)
        assert not np.any(cov.cg(mv(spd), jnp.zeros(12), 3)) and not np.any(
            cov.gmres(mv(spd), jnp.zeros(12), 2)
        )
        np.testing.assert_allclose(cov.diagonal(mv(nonsym), bj, "diag", chunk=5), np.diag(nonsym))
        np.testing.assert_allclose(cov.diagonal(mv(nonsym), bj, "rowsum"), nonsym.sum(1))
    with pytest.raises(ValueError, match="solver must be one of"):
        cov.solve(lambda v: v, jnp.ones(3), "lu", 1)


@pytest.mark.parametrize("product", cov.PRODUCTS)
def test_tweedie_covariance_is_the_exact_posterior_covariance(product):
    """Gaussian prior, exact eps: gamma_t J = Cov[x0 | x_t] = (1 - abar) Sigma P_t, built
    column by column from the products, and x0_hat = E[x0 | x_t]; float64: 1e-9 of the largest
    entry. (In float32 the noisiest step, abar = 4e-5, loses 1% to the cancellation in
    J = (I - sqrt(1 - abar) d eps / d x_t) / sqrt(abar), times gamma = 157.)"""
    with jax.enable_x64(True):
        sched = make_schedule(1000, respacing="10", variance_type="fixed_small")
        gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
        x = jnp.asarray(np.random.default_rng(1).normal(size=SHAPE), jnp.float64)
        params = gp.params(dtype=np.float64)
        for k in (9, 4, 0):
            tw = cov.tweedie(gp.model_fn, params, sched, x, k)
            cols = jax.vmap(lambda e, tw=tw: tw.cov(e.reshape(SHAPE), product).ravel())(
                jnp.eye(16, dtype=jnp.float64)
            )
            a = sched.tables["alphas_cumprod"][k]
            t = sched.timestep_map[k]
            exact = (1 - a) * gp.cov @ gp.precision(sched.train_alphas_cumprod[t])
            np.testing.assert_allclose(np.asarray(cols).T, exact, atol=1e-9 * np.abs(exact).max())
            mean = gp.posterior_mean_x0(np.asarray(x).ravel(), t)
            np.testing.assert_allclose(np.asarray(tw.x0).ravel(), mean, atol=1e-9)
