"""RED-diff: parity with the official code, Adam against torch's arithmetic, the closed-form fixed
point on a Gaussian prior, batch-size invariance and the batch-coupled mean, one compile per
sweep, and clear errors (docs/methods.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import reddiff as reddiff_config
from jaxdiff import tasks
from jaxdiff.diffusion.schedule import Schedule
from jaxdiff.experiment import scale_task
from jaxdiff.operators import get_operator
from jaxdiff.parity import reddiff as parity
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.reddiff import DENOISE_TERM_WEIGHTS
from tests.conftest import FIXTURES
from tests.gaussian_prior import GaussianPrior

FIX = FIXTURES / "reddiff"


def check_replay(name):
    r = parity.replay(FIX / name)
    bad = {k: a for k, a in r["arrays"].items() if not a["pass"]}
    assert r["pass"], bad
    return r


def test_parity_sr4_b1():
    """sr4 (block mean through the official SVD): mu within 1e-4 + 1e-5 max|mu| (measured 2.5e-5,
    the reference's own float32-vs-float64 gap is 1.2e-5), eps, grad, Adam state, losses."""
    r = check_replay("reddiff_sr4_b1.npz")
    assert r["arrays"]["mu"]["max_abs_err"] < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reddiff_inpaint_box_b2.npz", "reddiff_deblur_gauss_b1.npz"])
def test_parity_slow(name):
    """Batch 2 replays with batch_coupled=True (the official whole-batch mean); deblurring has
    the official operator's tiled singulars and pass-through pinv (mu[0] reaches 19)."""
    r = check_replay(name)
    assert r["batch_coupled"] == (r["batch"] > 1)


def test_adam_is_torch_adam():
    """The sampler's optax Adam (betas 0.9/0.99, eps 1e-8) against torch's single-tensor step
    written out (lerp_ / addcmul_ as fused multiply-adds, float64 bias corrections applied as
    float32 scalars), teacher-forced on the fixture's recorded gradients: the torch arithmetic
    reproduces the recorded exp_avg / exp_avg_sq bitwise and mu to 1 ulp; optax agrees to a few
    float32 ulps over the 10 steps. The first step moves every entry by lr (m_hat/sqrt(v_hat)
    = sign(g))."""
    npz = np.load(FIX / "reddiff_sr4_b1.npz")
    g, mu, lr = npz["grad"][:, 0], npz["mu"][:, 0], float(npz["lr"])
    m_t, v_t, mu_t = parity.torch_adam(g, mu[0], lr)
    np.testing.assert_array_equal(m_t, npz["exp_avg"][:, 0])
    np.testing.assert_array_equal(v_t, npz["exp_avg_sq"][:, 0])
    np.testing.assert_allclose(mu_t, mu[1:], atol=2.4e-7, rtol=0)  # 1 ulp at |mu| <= 2.8
    m_o, v_o, mu_o = parity.optax_adam(g, mu[0], lr)
    np.testing.assert_allclose(m_o, m_t, rtol=0, atol=1e-9)  # |exp_avg| <= 2e-3
    np.testing.assert_allclose(v_o, v_t, rtol=0, atol=1e-12)  # |exp_avg_sq| <= 4e-6
    np.testing.assert_allclose(mu_o, mu[1:], atol=3e-6, rtol=0)
    step = np.abs(mu_o[0] - mu[0])
    big = np.abs(g[0]) > 1e-5  # where Adam's eps (1e-8) is negligible
    np.testing.assert_allclose(step[big], lr, rtol=1e-3)


# --- a Gaussian prior with an exact eps: the fixed point in closed form --------------------------

SHAPE, M = (4, 4, 2), 12
D = int(np.prod(SHAPE))
RNG = np.random.default_rng(0)
A = RNG.normal(size=(M, D)) / np.sqrt(D)
A_J = jnp.asarray(A, jnp.float32)


def forward(op_params, x):
    return A_J @ x.reshape(-1)


def zeros_init(op_params, y):
    return jnp.zeros(SHAPE, jnp.float32)


def flat_schedule(a0: float, k: int) -> Schedule:
    """k steps at (almost) one noise level a0: RED-diff's objective is then time-independent."""
    abar = np.linspace(a0 + 1e-4, a0 - 1e-4, k)
    return Schedule(abar, np.arange(k), k)


def fixed_point(prior, y, a, g, v):
    """argmin_mu  v/(2m) |y - A mu|^2 + g (1-a)/(2D) (mu - m0)^T P_a (mu - m0),
    P_a = (a Sigma + (1 - a) I)^-1: where the expected RED-diff gradient vanishes."""
    lam = g * (1 - a) / D * prior.precision(a)
    lhs = v / M * A.T @ A + lam
    return np.linalg.solve(lhs, v / M * A.T @ y + lam @ prior.mu)


def test_gaussian_prior_fixed_point():
    """For x0 ~ N(m0, Sigma), eps*(x_t) = sqrt(1-a) P_a (x_t - sqrt(a) m0), so
    E[eps*(x_t) - n] = sqrt(a(1-a)) P_a (mu - m0) and, with w_t = g sqrt(1-a)/sqrt(a) ("linear"),
    the expected gradient is that of the Tikhonov objective in `fixed_point`: RED-diff is a MAP
    estimate under the prior smoothed to noise level a (it is NOT the posterior mean).
    Noise-free replay (n = 0): Adam lands on the fixed point to 1e-4 (measured 1.6e-5); with
    random draws the mean over 32 keys lands within 0.035 (per-image spread ~0.04 at lr 0.02, so
    ~5 standard errors; measured 0.02 with 16 keys)."""
    a, g, v, k = 0.5, 0.25, 1.0, 300
    sched = flat_schedule(a, k)
    prior = GaussianPrior(SHAPE, sched.alphas_cumprod, seed=1)
    x_true = prior.mu + np.linalg.cholesky(prior.cov) @ RNG.normal(size=D)
    y = A @ x_true + 0.1 * RNG.normal(size=M)
    target = fixed_point(prior, y, a, g, v)
    post_mean, _ = prior.linear_posterior(A, y, 0.1)
    assert np.abs(target - post_mean).max() > 0.1  # a different estimator, on purpose
    sample = get_sampler("reddiff")(
        prior.model_fn, sched, operator=forward, image_shape=SHAPE, init=zeros_init, lr=0.02
    )
    b = 32
    keys = jax.random.split(jax.random.key(1), b)
    ys = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (b, M))
    run = jax.jit(batched(sample))
    zero = {"noise": {n: jnp.zeros((b, k, *SHAPE)) for n in ("noise_x0", "noise_xt")}}
    det = np.asarray(run(prior.params(), keys, ys, None, None, zero).x0).reshape(b, -1)
    np.testing.assert_allclose(det, np.broadcast_to(target, det.shape), atol=1e-4)
    sto = np.asarray(run(prior.params(), keys, ys).x0).reshape(b, -1)
    assert np.abs(sto.mean(0) - target).max() < 0.035
    assert np.abs(sto - target).max() > 1e-3  # the draws do act


# --- batch semantics, sweeps, options, errors ---------------------------------------------------

SCHED = flat_schedule(0.5, 6)
GP = GaussianPrior(SHAPE, SCHED.alphas_cumprod, seed=2)
PARAMS = GP.params()
YS = 0.3 * jax.random.normal(jax.random.key(3), (3, M))
KEYS = jax.random.split(jax.random.key(4), 3)


def make(**kw):
    kw = {"operator": forward, "image_shape": SHAPE, "init": zeros_init, **kw}
    return get_sampler("reddiff")(GP.model_fn, SCHED, **kw)


def test_batch_size_invariance_and_batch_coupled_mean():
    """Per-sample (default): image 0 alone == image 0 in a batch of 3. batch_coupled=True: every
    mean runs over the valid images of the batch, so with a padding image (valid=False) each
    step-0 gradient is exactly the per-sample one / 2 (not / 3), and Adam cancels the factor
    except in its eps."""
    per = make(keep_trajectory=True)
    three = jax.jit(batched(per))(PARAMS, KEYS, YS)
    one = jax.jit(per)(PARAMS, KEYS[0], YS[0])
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-6)
    coupled = make(keep_trajectory=True, batch_coupled=True)
    valid = jnp.array([True, True, False])
    padded = jax.jit(batched(coupled))(PARAMS, KEYS, YS, None, None, None, valid)
    g_per, g_cpl = three.trajectory["grad"][:2, 0], padded.trajectory["grad"][:2, 0]
    np.testing.assert_array_equal(g_cpl * 2, g_per)  # same mu_0 and draws at step 0
    np.testing.assert_allclose(padded.x0[:2], three.x0[:2], atol=1e-3)
    with pytest.raises(ValueError, match="batched"):
        jax.jit(coupled)(PARAMS, KEYS[0], YS[0])


def test_sweep_is_one_compile_and_divergence_is_per_entry():
    """lr, grad_term_weight, obs_weight, sigma_x0 are traced: a sweep over 3 learning rates is one
    compiled call (one cache entry across two calls), and its entries equal separate runs. A NaN
    learning rate makes mu non-finite at step 0: that entry is frozen there (diverged_at 0,
    the output stays finite), the others are untouched."""
    sweep = jax.jit(batched(make(), sweep=True))
    res = sweep(PARAMS, KEYS, YS, None, {"lr": jnp.array([0.05, 0.2, jnp.nan])})
    sweep(PARAMS, KEYS, YS, None, {"lr": jnp.array([0.01, 0.02, 0.03])})
    assert sweep._cache_size() == 1
    single = jax.jit(batched(make()))(PARAMS, KEYS, YS, None, {"lr": 0.2})
    np.testing.assert_allclose(res.x0[1], single.x0, atol=1e-6)
    assert not np.allclose(res.x0[0], res.x0[1], atol=1e-3)
    np.testing.assert_array_equal(res.diverged_at, [[-1] * 3, [-1] * 3, [0] * 3])
    assert np.all(np.isfinite(res.x0))


@pytest.mark.parametrize(
    "option,fn",
    [
        ("linear", lambda s: s),
        ("sqrt", np.sqrt),
        ("square", np.square),
        ("log", lambda s: np.log(s + 1)),
        ("trunc_linear", lambda s: np.minimum(s, 1)),
        ("power2over3", lambda s: s ** (2 / 3)),
        ("const", np.ones_like),
    ],
)
def test_denoise_term_weights(option, fn):
    """f(snr_inv) for each of the code's denoise_term_weight options (w_t = lambda f(snr_inv);
    the sampler's recorded w_t is checked against the fixtures' in the parity replay)."""
    s = np.array([0.01, 0.5, 1.0, 6.2, 61.0], np.float32)
    got = DENOISE_TERM_WEIGHTS[option](jnp.asarray(s))
    np.testing.assert_allclose(got, fn(s), rtol=1e-6)


def test_pinv_init():
    """init="pinv" starts at A^+ y (inpainting: the masked y; with lr 0 mu never moves)."""
    mask = np.ones(SHAPE, np.float32)
    mask[1:3, 1:3] = 0
    op = get_operator("inpaint", image_shape=SHAPE, mask=mask)
    s = get_sampler("reddiff")(GP.model_fn, SCHED, operator=op, keep_trajectory=True, lr=0.0)
    y = jax.random.normal(jax.random.key(0), SHAPE)
    r = jax.jit(s)(PARAMS, KEYS[0], y, op.sample(None))
    np.testing.assert_allclose(r.trajectory["mu"][-1], y * mask, atol=1e-6)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="denoise_term_weight"):
        make(denoise_term_weight="cubic")
    with pytest.raises(ValueError, match="init"):
        make(init="random")
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        make()(PARAMS, KEYS[0], YS[0], None, {"eta": 1.0})
    with pytest.raises(ValueError, match="measurement y has shape"):
        make()(PARAMS, KEYS[0], jnp.zeros((M + 1,)))
    with pytest.raises(ValueError, match="needs the measurement"):
        make()(PARAMS, KEYS[0], None)
    with pytest.raises(ValueError, match="needs an operator"):
        get_sampler("reddiff")(GP.model_fn, SCHED, image_shape=SHAPE)
    phase = get_operator("phase_retrieval", image_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="needs a linear operator"):
        get_sampler("reddiff")(GP.model_fn, SCHED, operator=phase)
    with pytest.raises(ValueError, match="noise_x0"):
        make()(PARAMS, KEYS[0], YS[0], None, None, {"noise": jnp.zeros((6, *SHAPE))})


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_config_presets_build(task):
    """configs/reddiff.py: every linear task builds the sampler on its operator at 32 px with the
    preset's options and hparams (the start A^+ y included); phase retrieval is refused."""
    if task not in reddiff_config.SETTINGS:
        with pytest.raises(ValueError, match="linear operator"):
            reddiff_config.get_config(task)
        return
    c = reddiff_config.get_config(task)
    t = scale_task(c.task.to_dict(), 32)
    op = get_operator(t["operator"], image_shape=(32, 32, 3), **t["operator_config"])
    spec = get_sampler(c.method)
    assert set(c.sampler.hparams) == set(spec.hparams)
    spec(GP.model_fn, SCHED, operator=op, **c.sampler.options.to_dict(), **c.sampler.hparams)
