"""The shared particle machinery (samplers/particles.py): log-weights, ESS, both resampling
schemes against their definitions, replayed ancestors, the estimators and the particle loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.samplers import particles
from jaxdiff.samplers.base import LoopOptions


def test_normalize_and_ess():
    logw = jnp.log(jnp.array([1.0, 1.0, 2.0, 4.0]))
    w = particles.weights(logw)
    np.testing.assert_allclose(np.asarray(w), [0.125, 0.125, 0.25, 0.5], rtol=1e-6)
    np.testing.assert_allclose(float(particles.ess(logw)), 1 / (2 * 0.125**2 + 0.25**2 + 0.5**2))
    # huge log-weights: log-sum-exp keeps them finite; all -inf falls back to uniform
    big = jnp.array([1e3, 1e3 + np.log(3.0)], jnp.float32)  # exp(1e3) overflows
    np.testing.assert_allclose(np.asarray(particles.weights(big)), [0.25, 0.75], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(particles.weights(jnp.full((4,), -jnp.inf))), 0.25)
    assert float(particles.ess(jnp.zeros(8))) == pytest.approx(8.0)
    # equal weights far from 0 (an exact filter's 4e11, float32 spacing 32768): still 1/N each
    equal = jnp.full((2,), 4.361443e11, jnp.float32)
    np.testing.assert_allclose(np.asarray(particles.normalize(equal)), -np.log(2.0), rtol=1e-6)
    assert float(particles.ess(equal)) == pytest.approx(2.0)
    assert float(particles.weighted_mean(jnp.ones((2, 3)), equal).max()) == pytest.approx(1.0)


def test_systematic_is_the_inverse_cdf_on_the_grid():
    """Weights (0.1, 0.2, 0.3, 0.4) at u = 0.5: grid (i + 0.5) / 4 = .125 .375 .625 .875 falls in
    particles 1, 2, 3, 3 of the CDF (.1, .3, .6, 1)."""
    logw = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
    draws = {"u": jnp.array([0.5, 0.9, 0.9, 0.9]), "ancestors": jnp.full((4,), -1)}
    idx = particles.ancestors(logw, draws, "systematic")
    assert idx.tolist() == [1, 2, 3, 3]
    idx = particles.ancestors(logw, draws, "multinomial")  # each uniform on its own
    assert idx.tolist() == [2, 3, 3, 3]


def test_replayed_ancestors_win():
    logw = jnp.zeros(4)
    draws = {"u": jnp.zeros(4), "ancestors": jnp.array([3, 3, 0, 1])}
    x = jnp.arange(4.0)[:, None]
    x_new, logw_new, idx, e = particles.resample(x, logw, draws, "multinomial")
    assert idx.tolist() == [3, 3, 0, 1]
    assert x_new[:, 0].tolist() == [3.0, 3.0, 0.0, 1.0]
    np.testing.assert_allclose(np.asarray(logw_new), -np.log(4.0))
    assert float(e) == pytest.approx(4.0)


@pytest.mark.parametrize("scheme", particles.SCHEMES)
def test_resampling_is_unbiased(scheme):
    """Offspring counts average N w_i over many keys (both schemes are unbiased)."""
    p = np.array([0.05, 0.15, 0.3, 0.5])
    logw = jnp.log(jnp.asarray(p, jnp.float32))
    n, reps = 4, 4000

    def counts(key):
        idx = particles.ancestors(logw, particles.resample_draws(key, n), scheme)
        return jnp.bincount(idx, length=n)

    c = jax.vmap(counts)(jax.random.split(jax.random.PRNGKey(0), reps))
    mean = np.asarray(c).mean(0)
    np.testing.assert_allclose(mean, n * p, atol=0.05)
    if scheme == "systematic":  # low variance: counts are floor or ceil of N w_i
        assert np.all(np.abs(np.asarray(c) - n * p) < 1)


def test_adaptive_threshold_keeps_balanced_particles():
    x = jnp.arange(4.0)
    draws = particles.resample_draws(jax.random.PRNGKey(1), 4)
    logw = jnp.log(jnp.array([0.24, 0.25, 0.25, 0.26]))
    x_new, logw_new, idx, _ = particles.resample(x, logw, draws, "multinomial", threshold=0.5)
    assert idx.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(np.asarray(logw_new), np.asarray(particles.normalize(logw)))
    skewed = jnp.log(jnp.array([0.97, 0.01, 0.01, 0.01]))
    _, logw_new, _, e = particles.resample(x, skewed, draws, "multinomial", threshold=0.5)
    assert float(e) < 2.0
    np.testing.assert_allclose(np.asarray(logw_new), -np.log(4.0))


def test_estimators():
    x = jnp.array([[0.0], [10.0]])
    logw = jnp.log(jnp.array([0.25, 0.75]))
    assert float(particles.weighted_mean(x, logw)[0]) == pytest.approx(7.5)
    cov = particles.weighted_cov(x, logw)
    assert float(cov[0, 0]) == pytest.approx(0.25 * 0.75 * 100)
    picks = jax.vmap(lambda k: particles.estimate("draw", x, logw, k))(
        jax.random.split(jax.random.PRNGKey(0), 2000)
    )
    assert float(jnp.mean(picks == 10.0)) == pytest.approx(0.75, abs=0.04)


def test_bad_options():
    with pytest.raises(ValueError, match="num_particles"):
        particles.check_options("m", 0, "multinomial", "mean")
    with pytest.raises(ValueError, match="resampling"):
        particles.check_options("m", 4, "stratified?", "mean")
    with pytest.raises(ValueError, match="estimator"):
        particles.check_options("m", 4, "multinomial", "median")


def test_particle_chain_records_ess_weights_and_snapshots():
    """A toy SMC: particle i gets log-weight -i at every step and is resampled; x counts the
    steps. The ESS per step is the ESS of those weights, x0 the weighted mean."""
    n, steps = 4, np.arange(5)[::-1]
    inc = -jnp.arange(n, dtype=jnp.float32)

    def draw(key, x):
        return particles.resample_draws(key, n)

    def step(x, logw, k, z, state):
        logw = logw + inc
        x, logw, _, e = particles.resample(x + 1.0, logw, z, "systematic", threshold=0.0)
        return x, logw, state, e, {}

    out = particles.particle_chain(
        step,
        jnp.zeros((n, 2, 2, 1)),
        steps,
        key=jax.random.PRNGKey(0),
        replay=None,
        loop=LoopOptions(snapshot_every=2),
        label="toy",
        estimator="mean",
        draw=draw,
    )
    w = np.exp(-np.arange(4.0)) / np.exp(-np.arange(4.0)).sum()
    expected_ess = 1 / np.sum(w**2)  # threshold 0: never resampled, one increment per step
    np.testing.assert_allclose(np.asarray(out.ess)[0], expected_ess, rtol=1e-5)
    w2 = w**2 / np.sum(w**2)  # the weights accumulate: -2 i after two steps
    np.testing.assert_allclose(np.asarray(out.ess)[1], 1 / np.sum(w2**2), rtol=1e-5)
    assert out.particles.shape == (n, 2, 2, 1) and out.log_weights.shape == (n,)
    assert out.ess.shape == (5,) and out.snapshots.shape == (3, 2, 2, 1)
    np.testing.assert_allclose(np.asarray(out.x0), 5.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.snapshots[:, 0, 0, 0]), [2, 4, 5], rtol=1e-6)
