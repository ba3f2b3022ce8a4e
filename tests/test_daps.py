"""DAPS: parity with the official code (tests/fixtures/daps, trimmed copies of the shared
fixtures: inputs, draws, x_t and the Langevin loss), the grids bit for bit, a closed form on a
linear-Gaussian problem, batch-size invariance, one compile per sweep, clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import annealing, make_schedule
from jaxdiff.parity import daps as daps_parity
from jaxdiff.samplers import SAMPLERS, batched, get_sampler
from tests.gaussian_prior import GaussianPrior

FAST = ["daps_inpaint_box_b2"]
SLOW = ["daps_inpaint_random_b2", "daps_gaussian_blur_b2", "daps_down_sampling_b2"]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_daps_trajectory(fixtures_dir, name):
    """Every x_t of the 4-step trajectory within 1e-3 (measured 6.4e-4 .. 7.3e-4: the float32
    noise of O(400) values; the reference's own float32-vs-float64 replay differs by 4.2e-4 ..
    5.2e-4), the Langevin loss to 1e-5 relative, grids exact."""
    with jax.default_matmul_precision("highest"):
        r = daps_parity.replay(fixtures_dir / "daps" / f"{name}.npz")
    assert r["pass"], r
    a = r["arrays"]
    assert a["x_t"]["max_abs_err"] < 1e-3
    assert a["mcmc_loss"]["max_rel_err"] < 1e-5
    assert a["sigma_steps"]["max_abs_err"] == 0 and a["ode_time"]["max_abs_err"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + SLOW)
def test_float64_replay_matches_the_reference_float64_replay(fixtures_dir, name):
    """float64: per step, our error against the float32 reference equals the reference's own
    float64-vs-float32 difference (daps.json f64_replay): our float64 DAPS is torch's float64 DAPS
    up to float64 rounding, so the float32 differences above are float32 noise only."""
    r = daps_parity.replay(fixtures_dir / "daps" / f"{name}.npz", dtype="float64")
    assert r["pass"], r
    ours = np.array(r["arrays"]["x_t"]["per_step_max_abs_err"])
    ref = np.array(r["reference_f64_replay_max_abs_diff_x_t_per_step"])
    np.testing.assert_allclose(ours, ref, rtol=0.05, atol=1e-6)


def test_grids_are_the_official_float32_values(fixtures_dir):
    """annealing grid, per-step ODE grids (t_0 = 99.99998474 for sigma 100, as the official
    float32 tensor arithmetic gives) and the fractional VPPrecond timesteps (1 ulp)."""
    task = json.loads((fixtures_dir / "daps" / "daps.json").read_text())["tasks"]["inpaint_box"]
    sig = annealing.annealing_sigmas(4, 100, 0.1, 7)
    np.testing.assert_array_equal(sig, np.float32(task["sigma_steps_float32"]))
    grid = annealing.ode_grids(sig[:4], 2, 0.01, 7)
    np.testing.assert_array_equal(grid, np.float32(task["ode_time_float32"]))
    c = annealing.vp_timestep(grid[:, :2]).ravel()
    np.testing.assert_allclose(c, task["ode_c_noise_float32"], rtol=1e-7)
    # abar(c_noise(sigma)) = 1 / (1 + sigma^2): the VP state is c_in times the VE state
    s = np.array([0.05, 1.0, 7.0, 80.0])
    ab = np.asarray(annealing.vp_alphas_cumprod(annealing.vp_timestep(s, dtype=np.float64)))
    np.testing.assert_allclose(ab, 1 / (1 + s**2), rtol=1e-6)  # float32
    np.testing.assert_allclose(
        annealing.vp_input_scale(s, np.float64), np.sqrt(1 / (1 + s**2)), rtol=1e-15
    )


# ---- linear-Gaussian problem with an exact denoiser --------------------------------------------
SHAPE = (2, 2, 1)
GP = GaussianPrior(SHAPE, np.linspace(0.99, 0.01, 4))
A = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0]])
SIGMA_Y = 0.2
_L, _V = np.linalg.eigh(GP.cov)
PARAMS = {k: jnp.asarray(v, jnp.float32) for k, v in {"mu": GP.mu, "l": _L, "V": _V}.items()}
OPTS = dict(annealing_steps=12, ode_steps=3, mcmc_steps=30, lr=1e-3, lr_min_ratio=0.5)


def gauss_eps(p, x, t):
    """Exact eps of N(mu, cov) at the fractional VP timestep t (abar from the continuous VP-SDE,
    the inverse of VPPrecond's c_noise), so D(x; sigma) = E[x0 | x0 + sigma n = x] exactly."""
    abar = annealing.vp_alphas_cumprod(t)[:, None]
    flat = x.reshape(x.shape[0], -1)
    r = (flat - jnp.sqrt(abar) * p["mu"]) @ p["V"]  # cov = V diag(l) V^T
    eps = (r * jnp.sqrt(1 - abar) / (abar * p["l"] + 1 - abar)) @ p["V"].T
    return eps.reshape(x.shape)


def forward(x):
    return jnp.asarray(A, x.dtype) @ x.reshape(-1)


def daps_moments(sample, y, lr0, lr_min_ratio, tau, mcmc_steps, momentum=None):
    """The exact mean and covariance of DAPS's output on this problem (float64): with an exact
    Gaussian denoiser every Euler step, Langevin update and re-noise is affine in (x, x_t) plus
    independent Gaussian noise, so the moments propagate in closed form. `momentum`: HMC instead
    (v ~ N(0, I) per step; v <- m v + sqrt(lr) score + sqrt(2 (1 - m)) eps, x <- x + sqrt(lr) v),
    the joint state then (x, v, x_t)."""
    if momentum is not None:
        return _hmc_moments(sample, y, lr0, lr_min_ratio, tau, mcmc_steps, momentum)
    d, mu, cov = GP.d, GP.mu, GP.cov
    eye = np.eye(d)
    sig, grid = sample.sigmas.astype(np.float64), sample.ode_grid.astype(np.float64)
    n = len(sig) - 1
    m, c = np.zeros(d), sig[0] ** 2 * eye
    hess = 2 * A.T @ A / tau**2
    for i in range(n):
        lin, off = eye, np.zeros(d)  # x0_hat = lin x_t + off
        for k in range(grid.shape[1] - 1):
            t, t_next = grid[i, k], grid[i, k + 1]
            g = cov @ np.linalg.inv(cov + t**2 * eye)  # D(x) = mu + g (x - mu)
            step = eye + (t - t_next) / t * (g - eye)
            lin, off = step @ lin, step @ off + (t - t_next) / t * (eye - g) @ mu
        s2 = sig[i] ** 2
        lr = lr0 * (1 + i / (n + 1) * (lr_min_ratio - 1))
        # joint z = [x; x_t]: mean mz, covariance cz; x starts at x0_hat
        mz = np.concatenate([lin @ m + off, m])
        cz = np.block([[lin @ c @ lin.T, lin @ c], [c @ lin.T, c]])
        f = np.block([[eye - lr * (hess + eye / s2), lr / s2 * lin], [0 * eye, eye]])
        b = np.concatenate([lr * (off / s2 + 2 * A.T @ y / tau**2), np.zeros(d)])
        q = np.block([[2 * lr * eye, 0 * eye], [0 * eye, 0 * eye]])
        for _ in range(mcmc_steps):
            mz, cz = f @ mz + b, f @ cz @ f.T + q
        m, c = mz[:d], cz[:d, :d] + sig[i + 1] ** 2 * eye
    return m, c


def _ode_affine(grid_row, eye, mu, cov):
    """x0_hat = lin x_t + off: the Euler steps of one annealing step with the exact denoiser."""
    lin, off = eye, np.zeros(len(eye))
    for k in range(len(grid_row) - 1):
        t, t_next = grid_row[k], grid_row[k + 1]
        g = cov @ np.linalg.inv(cov + t**2 * eye)  # D(x) = mu + g (x - mu)
        step = eye + (t - t_next) / t * (g - eye)
        lin, off = step @ lin, step @ off + (t - t_next) / t * (eye - g) @ mu
    return lin, off


def _hmc_moments(sample, y, lr0, lr_min_ratio, tau, mcmc_steps, momentum):
    d, mu, cov = GP.d, GP.mu, GP.cov
    eye, zero = np.eye(d), np.zeros((d, d))
    sig, grid = sample.sigmas.astype(np.float64), sample.ode_grid.astype(np.float64)
    n = len(sig) - 1
    m, c = np.zeros(d), sig[0] ** 2 * eye
    hess = 2 * A.T @ A / tau**2
    for i in range(n):
        lin, off = _ode_affine(grid[i], eye, mu, cov)
        s2 = sig[i] ** 2
        lr = lr0 * (1 + i / (n + 1) * (lr_min_ratio - 1))
        r = np.sqrt(lr)
        # score = S x + T x_t + c0; joint z = [x; v; x_t], x from x0_hat, v ~ N(0, I)
        S, T = -(hess + eye / s2), lin / s2
        c0 = off / s2 + 2 * A.T @ y / tau**2
        mz = np.concatenate([lin @ m + off, np.zeros(d), m])
        cz = np.block([[lin @ c @ lin.T, zero, lin @ c], [zero, eye, zero], [c @ lin.T, zero, c]])
        f = np.block(
            [[eye + lr * S, r * momentum * eye, lr * T], [r * S, momentum * eye, r * T],
             [zero, zero, eye]]
        )  # fmt: skip
        b = np.concatenate([lr * c0, r * c0, np.zeros(d)])
        q = (
            2
            * (1 - momentum)
            * np.block([[lr * eye, r * eye, zero], [r * eye, eye, zero], [zero, zero, zero]])
        )
        for _ in range(mcmc_steps):
            mz, cz = f @ mz + b, f @ cz @ f.T + q
        m, c = mz[:d], cz[:d, :d] + sig[i + 1] ** 2 * eye
    return m, c


def test_hmc_sample_mean_and_covariance_are_the_closed_form():
    """mc_algo "hmc" (the repo's pixel_hmc groups): 1024 samples, mean within 4 standard errors
    and variances within 15% of the exact moments of DAPS-HMC on the linear-Gaussian problem."""
    rng = np.random.default_rng(5)
    x_true = GP.mu + np.linalg.cholesky(GP.cov) @ rng.normal(size=GP.d)
    y = A @ x_true + SIGMA_Y * rng.normal(size=2)
    opts = dict(OPTS, mcmc_steps=5, lr=3e-3, momentum=0.5, mc_algo="hmc")
    sample = get_sampler("daps")(
        gauss_eps, None, operator=forward, image_shape=SHAPE, tau=SIGMA_Y, **opts
    )
    b = 1024
    keys = jax.random.split(jax.random.key(1), b)
    ys = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (b, 2))
    x = np.asarray(jax.jit(batched(sample))(PARAMS, keys, ys).x0).reshape(b, -1)
    m, c = daps_moments(sample, y, 3e-3, OPTS["lr_min_ratio"], SIGMA_Y, 5, momentum=0.5)
    m_langevin, _ = daps_moments(sample, y, 3e-3, OPTS["lr_min_ratio"], SIGMA_Y, 5)
    se = np.sqrt(np.diag(c) / b)
    assert np.abs(m - m_langevin).max() > 5 * se.max()  # Langevin's updates would fail below
    assert np.all(np.abs(x.mean(0) - m) < 4 * se), (x.mean(0), m, se)
    np.testing.assert_allclose(x.var(0), np.diag(c), rtol=0.15)
    with pytest.raises(ValueError, match="mc_algo 'mala'"):
        get_sampler("daps")(gauss_eps, None, operator=forward, image_shape=SHAPE, mc_algo="mala")


def test_linear_gaussian_sample_mean_and_covariance_are_the_closed_form():
    """1024 vmapped samples: the sample mean within 4 standard errors of DAPS's exact output mean
    and the variances within 15% (the estimate's own spread is 4.4%); DAPS's exact mean lies
    within 0.1 of the true posterior mean E[x0 | y] (the prior mean is 0.37 away): DAPS's
    Gaussian approximation N(x0_hat, sigma^2) of p(x0 | x_t) biases it at finite sigma."""
    rng = np.random.default_rng(3)
    x_true = GP.mu + np.linalg.cholesky(GP.cov) @ rng.normal(size=GP.d)
    y = A @ x_true + SIGMA_Y * rng.normal(size=2)
    sample = get_sampler("daps")(
        gauss_eps, None, operator=forward, image_shape=SHAPE, tau=SIGMA_Y, **OPTS
    )
    b = 1024
    keys = jax.random.split(jax.random.key(0), b)
    ys = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (b, 2))
    x = np.asarray(jax.jit(batched(sample))(PARAMS, keys, ys).x0).reshape(b, -1)
    m, c = daps_moments(sample, y, OPTS["lr"], OPTS["lr_min_ratio"], SIGMA_Y, OPTS["mcmc_steps"])
    se = np.sqrt(np.diag(c) / b)
    assert np.all(np.abs(x.mean(0) - m) < 4 * se), (x.mean(0), m, se)
    np.testing.assert_allclose(x.var(0), np.diag(c), rtol=0.15)
    post_mean, _ = GP.linear_posterior(A, y, SIGMA_Y)
    assert np.abs(m - post_mean).max() < 0.1
    assert np.abs(GP.mu - post_mean).max() > 0.3


TRACES = []


def counting_eps(p, x, t):
    TRACES.append(1)
    return gauss_eps(p, x, t)


def test_batch_size_invariance_and_one_compile_per_sweep():
    """A sweep over 3 Langevin step sizes on a batch of 3 is one compiled program (traced once),
    and image 0 of its default-lr entry equals image 0 run alone (no batch coupling)."""
    sample = get_sampler("daps")(
        counting_eps, None, operator=forward, image_shape=SHAPE, tau=SIGMA_Y, **OPTS
    )
    keys = jax.random.split(jax.random.key(1), 3)
    ys = 0.3 * jax.random.normal(jax.random.key(2), (3, 2))
    sweep = jax.jit(batched(sample, sweep=True))
    lrs = jnp.array([5e-4, OPTS["lr"], 2e-3])
    res = sweep(PARAMS, keys, ys, None, {"lr": lrs})
    n_traces = len(TRACES)
    sweep(PARAMS, keys, ys, None, {"lr": lrs * 0.5})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    one = jax.jit(sample)(PARAMS, keys[0], ys[0])  # the default lr, alone
    np.testing.assert_allclose(res.x0[1, 0], one.x0, atol=2e-6, rtol=0)
    assert not np.allclose(res.x0[1, 1], one.x0, atol=1e-2)
    assert not np.allclose(res.x0[0], res.x0[2], atol=1e-3)


def test_registry_entry_replay_and_nonlinear_operator():
    spec = SAMPLERS.get("daps")
    assert spec.needs == frozenset({"operator", "measurement"})  # no "linear": A may be nonlinear
    assert set(spec.hparams) == {"lr", "tau", "lr_min_ratio", "momentum"} and not spec.grad
    assert spec.num_evaluations(200, {"ode_steps": 5}) == 1000  # DAPS-1K
    # replayed draws drive the chain: the same draws give the same sample whatever the key
    sample = get_sampler("daps")(
        gauss_eps,
        None,
        operator=lambda x: jnp.abs(forward(x)),
        image_shape=SHAPE,
        tau=SIGMA_Y,
        **OPTS,
    )
    n, l_ = OPTS["annealing_steps"], OPTS["mcmc_steps"]
    k = jax.random.split(jax.random.key(5), 3)
    rep = {
        "x_T": jax.random.normal(k[0], SHAPE),
        "noise": {
            "mcmc": jax.random.normal(k[1], (n, l_, *SHAPE)),
            "renoise": jax.random.normal(k[2], (n, *SHAPE)),
        },
    }
    y = jnp.array([0.3, 0.5])
    run = jax.jit(sample)
    a = run(PARAMS, jax.random.key(0), y, None, None, rep)
    b = run(PARAMS, jax.random.key(9), y, None, None, rep)
    np.testing.assert_array_equal(a.x0, b.x0)
    assert np.all(np.isfinite(a.x0)) and int(a.diverged_at) == -1
    # a fresh run unfolds the Langevin draws inside the inner scan; replaying the full draws of
    # the same keys (x_T from the key's first half, step i from fold_in(second half, i)) is equal
    key = jax.random.key(7)
    k_init, k_loop = jax.random.split(key)
    x = jnp.zeros(SHAPE)
    full = jax.vmap(lambda i: sample.draw(jax.random.fold_in(k_loop, i), x))(jnp.arange(n))
    fresh = run(PARAMS, key, y)
    replayed = run(
        PARAMS, key, y, None, None, {"x_T": jax.random.normal(k_init, SHAPE), "noise": full}
    )
    np.testing.assert_allclose(fresh.x0, replayed.x0, atol=1e-5, rtol=0)


def test_bad_inputs_are_clear_errors():
    make = get_sampler("daps")
    with pytest.raises(ValueError, match="needs an operator"):
        make(gauss_eps, None, image_shape=SHAPE, annealing_steps=3)
    with pytest.raises(ValueError, match="pass annealing_steps"):
        make(gauss_eps, None, operator=forward, image_shape=SHAPE)
    with pytest.raises(ValueError, match="mcmc_steps must be an integer >= 1"):
        make(gauss_eps, None, operator=forward, image_shape=SHAPE, annealing_steps=3, mcmc_steps=0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        make(gauss_eps, None, operator=forward, image_shape=SHAPE, annealing_steps=3, sigma_min=200)
    cosine = make_schedule(1000, "cosine", respacing="10")
    with pytest.raises(ValueError, match="not the continuous VP-SDE"):
        make(gauss_eps, cosine, operator=forward, image_shape=SHAPE)
    linear = make(
        gauss_eps, make_schedule(1000, respacing="10"), operator=forward, image_shape=SHAPE
    )
    assert len(linear.sigmas) == 11  # annealing steps = the respaced step count
    sample = make(gauss_eps, None, operator=forward, image_shape=SHAPE, **OPTS)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"maps an image \(2, 2, 1\) to \(2,\), but the meas"):
        jax.eval_shape(sample, PARAMS, key, jnp.zeros(3))
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        jax.eval_shape(sample, PARAMS, key, jnp.zeros(2), None, {"eta": 1.0})
    with pytest.raises(ValueError, match="replayed noise must be"):
        jax.eval_shape(sample, PARAMS, key, jnp.zeros(2), None, None, {"noise": jnp.zeros(3)})
    bad = {"mcmc": jnp.zeros((12, 29, *SHAPE)), "renoise": jnp.zeros((12, *SHAPE))}
    with pytest.raises(ValueError, match="replayed noise has shape"):
        jax.eval_shape(sample, PARAMS, key, jnp.zeros(2), None, None, {"noise": bad})
    with pytest.raises(ValueError, match="replay x_T has shape"):
        jax.eval_shape(sample, PARAMS, key, jnp.zeros(2), None, None, {"x_T": jnp.zeros(3)})
    with pytest.raises(ValueError, match="needs the measurement y"):
        jax.eval_shape(sample, PARAMS, key, None)
