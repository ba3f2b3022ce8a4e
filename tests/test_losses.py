"""The variational-bound term (learned variance) against closed forms, and the hybrid loss."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import train_demo
from jaxdiff import training
from jaxdiff.diffusion import gaussian, losses
from jaxdiff.diffusion.schedule import make_schedule

LEARNED = {**train_demo.DIFFUSION, "variance_type": "learned_range"}


def test_normal_kl_matches_a_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    m1, s1, m2, s2 = 0.3, 0.7, -0.2, 1.3
    x = rng.normal(m1, s1, 2_000_000)
    log_p = -0.5 * ((x - m1) / s1) ** 2 - math.log(s1)
    log_q = -0.5 * ((x - m2) / s2) ** 2 - math.log(s2)
    mc = np.mean(log_p - log_q)
    got = float(losses.normal_kl(m1, 2 * math.log(s1), m2, 2 * math.log(s2)))
    assert abs(got - mc) < 4 * np.std(log_p - log_q) / math.sqrt(x.size), (got, mc)
    assert float(losses.normal_kl(m1, 0.4, m1, 0.4)) == 0.0


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.37, -5.0), (-0.99, -1.0), (1.0, 0.5)])
def test_discretized_likelihood_is_a_distribution_over_the_256_levels(mean, log_scale):
    levels = jnp.linspace(-1.0, 1.0, 256)
    logp = losses.discretized_gaussian_log_likelihood(levels, mean, jnp.asarray(log_scale))
    p = np.exp(np.asarray(logp, np.float64))
    np.testing.assert_allclose(p.sum(), 1.0, atol=2e-5)  # the bins telescope
    if log_scale < -2:  # narrow: the mode is the mean's bin (wide ones pile up in an edge bin)
        assert abs(float(levels[np.argmax(p)]) - mean) <= 1.0 / 255 + 1e-6


def _tables_and_noise(t, seed=0):
    schedule = make_schedule(variance_type="learned_range")
    c = training.per_image_tables(schedule, jnp.asarray(t))
    k1, k2 = jax.random.split(jax.random.key(seed))
    x0 = jax.random.uniform(k1, (len(t), 4, 4, 3), minval=-0.9, maxval=0.9)
    eps = jax.random.normal(k2, x0.shape)
    return schedule, c, x0, gaussian.q_sample(c, x0, eps), eps


def test_vb_term_is_zero_at_the_true_posterior_and_matches_closed_forms_off_it():
    t = [1, 10, 500, 999]
    schedule, c, x0, x_t, eps = _tables_and_noise(t)
    tab = schedule.tables
    post_var = tab["posterior_variance"][t]
    beta = tab["betas"][t]
    lo = -jnp.ones_like(x0)  # v = -1: learned_range at its lower end, the posterior variance
    vb = losses.vb_terms_bpd(c, "learned_range", x0, x_t, jnp.asarray(t), eps, lo)
    np.testing.assert_allclose(vb, 0.0, atol=1e-5)
    # v = +1: variance beta_t, the mean exact: KL per dim = (r - 1 - log r) / 2 with r = beta/var.
    vb = losses.vb_terms_bpd(c, "learned_range", x0, x_t, jnp.asarray(t), eps, -lo)
    r = post_var / beta
    np.testing.assert_allclose(vb, (r - 1 - np.log(r)) / 2 / math.log(2), rtol=2e-4, atol=1e-6)
    # An eps error delta moves the mean by coef1 * sqrt(1/abar - 1) * delta: KL = shift^2/(2 var).
    delta = 0.1
    vb = losses.vb_terms_bpd(c, "learned_range", x0, x_t, jnp.asarray(t), eps + delta, lo)
    shift = tab["posterior_mean_coef1"][t] * tab["sqrt_recipm1_alphas_cumprod"][t] * delta
    np.testing.assert_allclose(vb, shift**2 / (2 * post_var) / math.log(2), rtol=2e-3)


def test_vb_term_at_t0_is_the_decoder_nll_of_x0():
    schedule, c, x0, x_t, eps = _tables_and_noise([0, 0])
    x0 = jnp.round((x0 + 1) * 127.5) / 127.5 - 1  # on the 8-bit levels, away from the edges
    x_t = gaussian.q_sample(c, x0, eps)
    lo = -jnp.ones_like(x0)
    vb = losses.vb_terms_bpd(c, "learned_range", x0, x_t, jnp.zeros(2, int), eps, lo)
    # At t = 0 the model mean is x0 exactly; sigma^2 = the clipped posterior variance (entry 1).
    sigma = math.sqrt(schedule.tables["posterior_variance"][1])
    half = (1 / 255) / sigma
    p_bin = math.erf(half / math.sqrt(2))  # Phi(h) - Phi(-h)
    np.testing.assert_allclose(vb, -math.log2(p_bin), rtol=2e-3)


class EpsAndSigma(nn.Module):
    """Separate eps and variance branches, so their gradients can be told apart; with_sigma=False
    is the same eps branch alone (same parameter names)."""

    with_sigma: bool = True

    @nn.compact
    def __call__(self, x, t, y=None, *, train=False):
        temb = jnp.sin(jnp.asarray(t, jnp.float32)[:, None, None, None] * 1e-2)
        eps = nn.Conv(3, (3, 3), name="eps")(x + temb)
        if not self.with_sigma:
            return eps
        return jnp.concatenate([eps, jnp.tanh(nn.Conv(3, (3, 3), name="sigma")(x + temb))], -1)


@pytest.mark.slow
def test_hybrid_loss_trains_the_mean_by_mse_alone_and_sigma_by_the_bound():
    x0 = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3), minval=-1, maxval=1)
    key = jax.random.key(4)
    params = EpsAndSigma().init(jax.random.key(5), x0, jnp.zeros(4, int))["params"]
    hybrid = training.make_loss_fn(EpsAndSigma(), LEARNED)
    simple = training.make_loss_fn(EpsAndSigma(with_sigma=False), dict(train_demo.DIFFUSION))
    g_hybrid = jax.grad(lambda p: hybrid(p, x0, key)[0])(params)
    g_simple = jax.grad(lambda p: simple(p, x0, key)[0])({"eps": params["eps"]})
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        g_hybrid["eps"],
        g_simple["eps"],
    )
    assert float(optax.global_norm(g_hybrid["sigma"])) > 1e-4
    # The loss adds the bound (>= 0) to the MSE.
    assert float(hybrid(params, x0, key)[0]) > float(simple({"eps": params["eps"]}, x0, key)[0])


def test_fixed_variance_loss_rejects_a_model_with_variance_channels():
    loss = training.make_loss_fn(EpsAndSigma(), dict(train_demo.DIFFUSION))
    x0 = jnp.zeros((2, 8, 8, 3))
    params = EpsAndSigma().init(jax.random.key(0), x0, jnp.zeros(2, int))["params"]
    with pytest.raises(ValueError, match="outputs 6 channels but variance_type 'fixed_small'"):
        loss(params, x0, jax.random.key(1))


@pytest.mark.slow  # ~35 s: compiles a tiny ADM train step and sampler
def test_learn_sigma_option_trains_exports_and_samples_with_the_learned_variance(tmp_path):
    from jaxdiff.demo_prior import export
    from jaxdiff.diffusion.schedule import schedule_from_meta
    from jaxdiff.models import load_pretrained, model_fn
    from jaxdiff.samplers import batched, get_sampler
    from jaxdiff.training import train

    config = train_demo.get_config("tiny,learn_sigma")
    config.train.num_steps = 3
    run, state, history = train(config, tmp_path / "run", log=lambda m: None)
    assert np.all(np.isfinite(history["loss"])) and "hybrid" in history["title"]
    export(run, state, history, tmp_path / "prior")
    model, params, meta = load_pretrained(tmp_path / "prior")
    assert meta["diffusion"]["variance_type"] == "learned_range"
    assert meta["model_config"]["out_channels"] == 6
    schedule = schedule_from_meta(meta["diffusion"], "5")
    assert schedule.learned_variance
    sample = get_sampler("ddpm")(model_fn(model), schedule, image_shape=(8, 8, 3))
    out = jax.jit(batched(sample))(params, jax.random.split(jax.random.key(0), 2))
    assert out.x0.shape == (2, 8, 8, 3) and np.all(np.isfinite(np.asarray(out.x0)))


@pytest.mark.parametrize("t", [50, 150, 300])
def test_vb_term_is_minimised_at_the_true_reverse_variance_of_a_gaussian_prior(t):
    """x0 ~ N(0, s^2): E[x0 | x_t] and Var(x0 | x_t) are exact, so with the exact mean the
    expected KL is least at sigma^2 = beta_tilde + coef1^2 Var(x0 | x_t), a point strictly inside
    learned_range's [beta_tilde, beta]; the bound's minimiser over v must land there."""
    s = 0.5
    schedule, c, _, _, _ = _tables_and_noise([t])
    k1, k2 = jax.random.split(jax.random.key(7))
    x0 = s * jax.random.normal(k1, (4096, 2, 2, 3))
    x_t = gaussian.q_sample(c, x0, jax.random.normal(k2, x0.shape))
    tab = schedule.tables
    abar = tab["alphas_cumprod"][t]
    total = abar * s**2 + 1 - abar
    eps_hat = math.sqrt(1 - abar) * x_t / total  # E[eps | x_t]
    var = (
        tab["posterior_variance"][t]
        + tab["posterior_mean_coef1"][t] ** 2 * s**2 * (1 - abar) / total
    )
    lo, hi = np.log(tab["posterior_variance"][t]), np.log(tab["betas"][t])
    v_want = 2 * (np.log(var) - lo) / (hi - lo) - 1  # learned_range: frac = (v + 1) / 2

    def expected_vb(v):
        v = jnp.full_like(x0, v)
        vb = losses.vb_terms_bpd(c, "learned_range", x0, x_t, jnp.asarray([t]), eps_hat, v)
        return jnp.mean(vb)

    grid = jnp.linspace(-1.2, 1.2, 601)
    v_best = float(grid[jnp.argmin(jax.lax.map(expected_vb, grid))])
    assert -0.9 < v_want < 0.9  # the test is not at an edge of the range
    assert abs(v_best - v_want) < 0.03, (v_best, v_want)  # measured: within 0.007
