"""DDIM (Song, Meng, Ermon 2021) against closed forms: eta = 1 is DDPM's fixed_small ancestral
chain, eta = 0 is deterministic and carries the exact Gaussian prior's x_T to the prior, the
respaced grids (skipN / ddimN) are the ones the model is called on, the shared `ddim_step`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import ddim_coefficients, ddim_step, make_schedule
from jaxdiff.samplers import SAMPLERS, batched, get_sampler
from tests.gaussian_prior import GaussianPrior

SHAPE = (4, 4, 1)
Z = 4.5  # z-score bound per statistic (<= 136 per check): P(false failure) < 1e-3


def flat(x):
    return np.asarray(x, np.float64).reshape(x.shape[0], -1)


def ddim_moments(gp, sched, eta):
    """Exact mean / covariance of the DDIM chain on the Gaussian prior: each step is linear,
    x_next = M x + b + c1 z, so the moments propagate in closed form from N(0, I)."""
    d, tb = gp.d, sched.tables
    m, c = np.zeros(d), np.eye(d)
    for k in range(sched.num_steps - 1, -1, -1):
        a, an = tb["alphas_cumprod"][k], tb["alphas_cumprod_prev"][k]
        p = gp.precision(sched.train_alphas_cumprod[sched.timestep_map[k]])
        e_lin, e_off = np.sqrt(1 - a) * p, -np.sqrt(1 - a) * p @ (np.sqrt(a) * gp.mu)
        x0_lin = np.sqrt(1 / a) * np.eye(d) - np.sqrt(1 / a - 1) * e_lin
        x0_off = -np.sqrt(1 / a - 1) * e_off
        c1 = eta * np.sqrt((1 - a / an) * (1 - an) / (1 - a))
        c2 = np.sqrt(max(1 - an - c1**2, 0.0))
        lin, off = np.sqrt(an) * x0_lin + c2 * e_lin, np.sqrt(an) * x0_off + c2 * e_off
        m, c = lin @ m + off, lin @ c @ lin.T + c1**2 * np.eye(d)
    return m, c


def check_moments(x, mean, cov, extra_cov_tol=0.0):
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) <= Z * se_mean), np.abs(x.mean(0) - mean) / se_mean
    dg = np.diag(cov)
    se_cov = np.sqrt((dg[:, None] * dg[None, :] + cov**2) / n)
    err = np.abs(np.cov(x.T) - cov)
    assert np.all(err <= Z * se_cov + extra_cov_tol), (err / se_cov).max()


def test_registered_with_a_traced_eta():
    spec = SAMPLERS.get("ddim")
    assert spec.hparams == {"eta": 0.0} and spec.needs == frozenset()
    assert spec.num_evaluations(50) == 50


def test_ddim_step_eta1_is_the_ddpm_posterior():
    """eta = 1: c1^2 is the DDPM posterior variance beta~_t and sqrt(abar_prev) x0 + c2 eps is
    the posterior mean coef1 x0 + coef2 x_t, for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    (float64, every step of a 1000-step and a respaced schedule)."""
    for respacing in (None, "skip10"):
        tb = make_schedule(1000, respacing=respacing).tables
        a, an = tb["alphas_cumprod"][1:], tb["alphas_cumprod_prev"][1:]
        with jax.enable_x64(True):
            c1, c2 = (np.asarray(v) for v in ddim_coefficients(a, an, 1.0))
            np.testing.assert_allclose(c1**2, tb["posterior_variance"][1:], rtol=1e-10)
            x0, eps = 0.7, -1.3
            x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
            mean = tb["posterior_mean_coef1"][1:] * x0 + tb["posterior_mean_coef2"][1:] * x_t
            got = np.asarray(ddim_step(x0, eps, a, an, 1.0, 0.0))
            np.testing.assert_allclose(got, mean, rtol=1e-9, atol=1e-12)
            # eta = 0: no noise, and the step keeps x0 / eps (x_next is a point of the same ray)
            c1, c2 = ddim_coefficients(a, an, 0.0)
            np.testing.assert_array_equal(np.asarray(c1), 0.0)
            np.testing.assert_allclose(np.asarray(c2), np.sqrt(1 - an), rtol=1e-12)


@pytest.mark.slow
def test_eta1_chain_equals_ddpm_fixed_small_with_the_same_draws():
    """Whole chains with the same x_T and per-step draws, unclipped, on a 20-step respacing (the
    same algebra as the full schedule): DDIM(eta = 1) == DDPM fixed_small to float32 rounding
    (tolerance 2e-5)."""
    sched = make_schedule(1000, respacing="skip20", variance_type="fixed_small")
    gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
    kw = {"image_shape": SHAPE, "clip_denoised": False}
    ddim = get_sampler("ddim")(gp.model_fn, sched, eta=1.0, **kw)
    ddpm = get_sampler("ddpm")(gp.model_fn, sched, **kw)
    n = 3
    keys = jax.random.split(jax.random.key(0), 3)
    rep = {
        "x_T": jax.random.normal(keys[0], (n, *SHAPE)),
        "noise": jax.random.normal(keys[1], (n, sched.num_steps, *SHAPE)),
    }
    ks = jax.random.split(keys[2], n)
    a = jax.jit(batched(ddim))(gp.params(), ks, None, None, None, rep).x0
    b = jax.jit(batched(ddpm))(gp.params(), ks, None, None, None, rep).x0
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)


@pytest.mark.slow
def test_eta0_is_deterministic_and_maps_x_T_to_the_prior():
    """eta = 0 on 100 respaced steps: the output does not depend on the loop key (only x_T), the
    exact chain's moments are the prior's up to discretisation (measured: mean 6.7e-4, covariance
    5.3% of the largest variance, the ODE's bias at 100 steps; 2.2% at 250), and 1000 samples
    match that chain within Z standard errors per mean and covariance entry."""
    sched = make_schedule(1000, respacing="100")
    gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
    sample = get_sampler("ddim")(gp.model_fn, sched, image_shape=SHAPE)
    run = jax.jit(batched(sample))
    n = 1000
    keys = jax.random.split(jax.random.key(1), n)
    res = run(gp.params(), keys)
    x_T = jax.random.normal(jax.random.key(9), (4, *SHAPE))
    r1 = run(gp.params(), keys[:4], None, None, None, {"x_T": x_T})
    r2 = run(gp.params(), keys[4:8], None, None, None, {"x_T": x_T})
    np.testing.assert_array_equal(r1.x0, r2.x0)
    m, c = ddim_moments(gp, sched, 0.0)
    bias = np.abs(c - gp.cov).max()
    assert np.abs(m - gp.mu).max() < 1e-3
    assert bias < 0.07 * np.diag(gp.cov).max(), bias
    check_moments(flat(res.x0), m, c)
    check_moments(flat(res.x0), gp.mu, gp.cov, extra_cov_tol=bias)
    assert np.all(np.asarray(res.diverged_at) == -1)


@pytest.mark.parametrize(
    "respacing, grid",
    [("skip10", range(0, 1000, 100)), pytest.param("ddim7", None, marks=pytest.mark.slow)],
)
def test_respacing_grids_are_the_model_calls(respacing, grid):
    """skipN = range(0, T, T // N) (the official DDIM/PiGDM codes); ddimN = the smallest stride
    giving exactly N steps. The model is called on that grid, descending, and the step from the
    lowest kept t goes to abar = 1 (x0_hat itself at eta = 0)."""
    sched = make_schedule(1000, respacing=respacing)
    if grid is None:
        grid = range(0, 1000, 143)
        assert len(grid) == 7
    np.testing.assert_array_equal(sched.timestep_map, list(grid))
    assert sched.tables["alphas_cumprod_prev"][0] == 1.0
    gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
    sample = get_sampler("ddim")(gp.model_fn, sched, image_shape=SHAPE, keep_trajectory=True)
    res = jax.jit(sample)(gp.params(), jax.random.key(0))
    np.testing.assert_array_equal(res.trajectory["timestep"], list(grid)[::-1])
    np.testing.assert_allclose(res.x0, res.trajectory["x0_hat"][-1], atol=1e-6)


def test_eta_sweep_one_compile_and_batch_invariance():
    sched = make_schedule(1000, respacing="skip20")
    gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
    traces = []

    def model_fn(p, x, t):
        traces.append(1)
        return gp.model_fn(p, x, t)

    sample = get_sampler("ddim")(model_fn, sched, image_shape=SHAPE)
    keys = jax.random.split(jax.random.key(3), 3)
    sweep = jax.jit(batched(sample, sweep=True))
    res = sweep(gp.params(), keys, None, None, {"eta": jnp.array([0.0, 0.5, 1.0])})
    n = len(traces)
    sweep(gp.params(), keys, None, None, {"eta": jnp.array([0.2, 0.3, 0.4])})
    assert sweep._cache_size() == 1 and len(traces) == n
    one = jax.jit(sample)(gp.params(), keys[1], hparams={"eta": 0.5})
    np.testing.assert_allclose(res.x0[1, 1], one.x0, atol=1e-6)
    assert not np.allclose(res.x0[0], res.x0[2], atol=1e-3)


def test_bad_inputs():
    sched = make_schedule(1000, respacing="skip10")
    gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
    sample = get_sampler("ddim")(gp.model_fn, sched, image_shape=SHAPE)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        sample(gp.params(), jax.random.key(0), hparams={"scale": 1.0})
    with pytest.raises(ValueError, match="replay x_T has shape"):
        sample(gp.params(), jax.random.key(0), replay={"x_T": jnp.zeros((2, 2, 1))})
    with pytest.raises(ValueError, match="image_shape"):
        get_sampler("ddim")(gp.model_fn, sched)
    with pytest.raises(ValueError, match="channels"):
        get_sampler("ddim")(
            gp.model_fn, sched.with_variance_type("learned_range"), image_shape=SHAPE
        )(gp.params(), jax.random.key(0))
