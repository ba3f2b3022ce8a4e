"""PnP-DM: parity with the official code's iterations, the closed form of the split-Gibbs target
with a Gaussian prior, the EDM grid, batch-size invariance, one compile per sweep and clear
errors on bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import annealing, edm
from jaxdiff.errors import ConfigError
from jaxdiff.operators import get_operator
from jaxdiff.operators.proximal import CircularBlur
from jaxdiff.samplers import batched, get_sampler
from tests.gaussian_prior import GaussianPrior

FAST = ["pnpdm_gaussian_blur_circ_edm"]
SLOW = ["pnpdm_gaussian_blur_circ_edm_sde", "pnpdm_super_resolution_svd_edm_sde"]


def _replay(fixtures_dir, name, **kw):
    from jaxdiff.parity.pnpdm import replay

    path = fixtures_dir / "pnpdm" / f"{name}.npz"
    if not path.is_file():
        pytest.fail(f"missing fixture {path}")
    with jax.default_matmul_precision("highest"):
        return replay(path, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_parity(fixtures_dir, name):
    """z and x of every iteration, rho, the first grid level below rho, the returned samples
    and the EDM grid within the README's rule."""
    r = _replay(fixtures_dir, name)
    bad = {k: v for k, v in r["arrays"].items() if not v.get("pass")}
    assert r["pass"], bad
    assert r["diverged_at"] == [-1] * r["images"]
    for key in ("z", "x", "rho", "i_start", "t_steps", "samples", "y_clean"):
        assert key in r["arrays"], key


def test_returned_samples_follow_the_codes_membership_test():
    """pnp_edm.py appends x when `i in linspace(burn_in, K - 1, S + 1, dtype=int)[1:]`: a
    repeated grid point gives one sample (10 iterations, burn-in 8, 3 per run: 8 and 9)."""
    from jaxdiff.parity.pnpdm import sample_iters

    assert sample_iters(10, 8, 3).tolist() == [8, 9]
    assert sample_iters(10, 2, 2).tolist() == [5, 9]
    assert sample_iters(13, 0, 1).tolist() == [12]


@pytest.mark.slow
def test_parity_needs_the_official_start(fixtures_dir, monkeypatch):
    """The code starts the prior step at the grid level below rho: the default extra step from
    rho itself fails the replay."""
    import jaxdiff.parity.pnpdm as par
    from jaxdiff.samplers import SAMPLERS

    spec = SAMPLERS.get("pnpdm")
    real = spec.__call__

    def default_start(self, *a, **kw):
        kw["official"] = False
        return real(*a, **kw)

    monkeypatch.setattr(type(spec), "__call__", default_start)
    r = par.replay(fixtures_dir / "pnpdm" / "pnpdm_gaussian_blur_circ_edm.npz")
    assert not r["arrays"]["x"]["pass"]


def test_edm_grid_and_vp_range():
    """The EDM grid is the EDM code's formula with t_N = 0; VPPrecond's range is sigma(1e-3),
    sigma(1) (the fixtures' float32 values 0.010483843 / 152.16697 within float32 rounding)."""
    t = edm.edm_sigma_steps(12, 0.0105, 80.0, 7.0)
    assert t.shape == (13,) and t[0] == 80.0 and t[-1] == 0.0
    np.testing.assert_allclose(t[-2], 0.0105, rtol=1e-12)
    assert np.all(np.diff(t) < 0)
    lo, hi = edm.vp_sigma_range()
    np.testing.assert_allclose([lo, hi], [0.010483843, 152.16697], rtol=3e-4)
    c_in, c_noise = edm.vp_precond(jnp.float32(2.0))
    np.testing.assert_allclose(c_in, 1 / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(c_noise, annealing.vp_timestep(2.0, dtype=np.float64), rtol=1e-5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        edm.edm_sigma_steps(10, 1.0, 0.5)


# ---- linear-Gaussian problem with an exact denoiser --------------------------------------------
SHAPE = (4, 4, 1)
GP = GaussianPrior(SHAPE, np.linspace(0.99, 0.01, 4))
_L, _V = np.linalg.eigh(GP.cov)
PARAMS = {k: jnp.asarray(v, jnp.float32) for k, v in {"mu": GP.mu, "l": _L, "V": _V}.items()}
SIGMA = 0.05
KERNEL = np.array([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]])
OPTS = dict(iterations=40, prior_steps=30, sigma=SIGMA, rho=1.0, rho_decay=0.8, rho_min=0.05)


def gauss_eps(p, x, t):
    """Exact eps of N(mu, cov) at the fractional VP timestep t, so D(x; sigma) is exact."""
    abar = annealing.vp_alphas_cumprod(t)[:, None]
    flat = x.reshape(x.shape[0], -1)
    r = (flat - jnp.sqrt(abar) * p["mu"]) @ p["V"]
    eps = (r * jnp.sqrt(1 - abar) / (abar * p["l"] + 1 - abar)) @ p["V"].T
    return eps.reshape(x.shape)


def _problem(op):
    p = op.sample(jax.random.key(5))
    eye = np.eye(16, dtype=np.float32)
    a = np.stack([np.asarray(op.apply(p, e.reshape(SHAPE))).ravel() for e in eye], 1)
    a = a.astype(np.float64)
    rng = np.random.default_rng(1)
    y = a @ rng.multivariate_normal(GP.mu, GP.cov) + SIGMA * rng.normal(size=a.shape[0])
    return p, a, y


@pytest.mark.parametrize(
    "op",
    [
        CircularBlur(SHAPE, kernel=KERNEL),
        pytest.param(
            get_operator("inpaint", image_shape=SHAPE, mask=np.arange(16).reshape(4, 4) % 5 > 1),
            marks=pytest.mark.slow,
        ),
        pytest.param(CircularBlur(SHAPE, kernel=KERNEL, sf=2), marks=pytest.mark.slow),
    ],
    ids=["circular_blur_fft", "inpaint_svd", "blur_sr2_perturb"],
)
@pytest.mark.slow
def test_gaussian_prior_split_gibbs_target(op):
    """Exact eps of a correlated 16-d Gaussian prior, sigma 0.05, 40 iterations of rho 1 * 0.8^k
    down to rho_min 0.05, 30 EDM steps, sde mode, 1000 chains. With an exact prior step the
    chain's x-marginal at fixed rho is the posterior of y = A x + n, n ~ N(0, sigma^2 I +
    rho^2 A A^T) (the split-Gibbs target, closed form): the sample mean lies within 0.3
    posterior std of its mean on every pixel (measured 0.15 with the FFT likelihood step on the
    circulant blur, 0.17 with the SVD step on inpainting, 0.09 with perturb-and-MAP on the blur
    with x2 decimation; the standard error is 0.03, the rest the 30-step Euler prior step), the
    std within 15% (measured 5.5 / 8.4 / 10.4%; the estimate's own spread is 2%); the prior mean
    is > 1.5 std away (2.6 / 6.3 / 1.6)."""
    p, a, yv = _problem(op)
    s = SIGMA**2 * np.eye(a.shape[0]) + OPTS["rho_min"] ** 2 * a @ a.T
    gain = GP.cov @ a.T @ np.linalg.inv(a @ GP.cov @ a.T + s)
    pm, pc = GP.mu + gain @ (yv - a @ GP.mu), GP.cov - gain @ a @ GP.cov
    ps = np.sqrt(np.diag(pc))
    assert (np.abs(GP.mu - pm) / ps).max() > 1.5
    sample = get_sampler("pnpdm")(gauss_eps, None, operator=op, image_shape=SHAPE, **OPTS)
    n = 1000
    y = jnp.asarray(yv.reshape(op.output_shape()), jnp.float32)
    keys = jax.random.split(jax.random.key(0), n)
    res = jax.jit(batched(sample, shared_op_params=True))(
        PARAMS, keys, jnp.broadcast_to(y, (n, *y.shape)), p
    )
    assert np.all(np.asarray(res.diverged_at) == -1)
    x = np.asarray(res.x0, np.float64).reshape(n, -1)
    err = np.abs(x.mean(0) - pm) / ps
    assert err.max() < 0.3, err.max()
    np.testing.assert_allclose(x.std(0), ps, rtol=0.15)


TRACES = []


def counting_eps(p, x, t):
    TRACES.append(1)
    return gauss_eps(p, x, t)


@pytest.mark.slow
def test_batch_size_invariance_and_one_compile_per_sweep():
    """Image 0 alone == image 0 in a batch of 3; a sweep over 3 (rho, rho_decay, rho_min) is one
    compiled call (traced once) equal to the separate runs."""
    op = CircularBlur(SHAPE, kernel=KERNEL)
    p = op.sample(None)
    opts = dict(OPTS, iterations=4, prior_steps=5)
    sample = get_sampler("pnpdm")(counting_eps, None, operator=op, image_shape=SHAPE, **opts)
    keys = jax.random.split(jax.random.key(1), 3)
    ys = 0.3 * jax.random.normal(jax.random.key(2), (3, *SHAPE))
    run = jax.jit(batched(sample, shared_op_params=True))
    three = run(PARAMS, keys, ys, p)
    one = jax.jit(sample)(PARAMS, keys[0], ys[0], p)
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-5, rtol=0)
    sweep = jax.jit(batched(sample, sweep=True, shared_op_params=True))
    hp = {"rho": jnp.array([1.0, 2.0, 1.0]), "rho_decay": jnp.array([0.8, 0.5, 1.0]),
          "rho_min": jnp.array([0.05, 0.1, 0.3])}  # fmt: skip
    res = sweep(PARAMS, keys, ys, p, hp)
    n_traces = len(TRACES)
    sweep(PARAMS, keys, ys, p, {k: v[::-1] for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    np.testing.assert_allclose(res.x0[0], three.x0, atol=1e-5, rtol=0)
    other = run(PARAMS, keys, ys, p, {k: v[1] for k, v in hp.items()})
    np.testing.assert_allclose(res.x0[1], other.x0, atol=1e-5, rtol=0)
    assert not np.allclose(res.x0[1], res.x0[2], atol=1e-3)


@pytest.mark.slow
def test_nonlinear_operator_takes_langevin_steps():
    """A nonlinear A (phase retrieval) runs the Langevin likelihood step (random init, as the
    code's phase retrieval) and stays finite; init='pinv' is refused for it."""
    op = get_operator("phase_retrieval", image_shape=(8, 8, 1))
    gp8 = GaussianPrior((8, 8, 1), np.linspace(0.99, 0.01, 4))
    lam, vec = np.linalg.eigh(gp8.cov)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in {"mu": gp8.mu, "l": lam, "V": vec}.items()}
    sample = get_sampler("pnpdm")(gauss_eps, None, operator=op, iterations=3, prior_steps=6,
                                  sigma=SIGMA, init="random", langevin_steps=5)  # fmt: skip
    y = op.apply(op.sample(None), jnp.asarray(gp8.mu.reshape(8, 8, 1), jnp.float32))
    res = jax.jit(sample)(params, jax.random.key(0), y, op.sample(None))
    assert np.all(np.isfinite(res.x0)) and int(res.diverged_at) == -1
    with pytest.raises(ValueError, match="init='pinv' needs a linear operator"):
        get_sampler("pnpdm")(gauss_eps, None, operator=op, iterations=3, sigma=0.1, init="pinv")


def test_bad_inputs_are_clear_errors():
    op = CircularBlur(SHAPE, kernel=KERNEL)
    make = get_sampler("pnpdm")
    with pytest.raises(ValueError, match="pnpdm: needs an operator"):
        make(gauss_eps, None, iterations=3, sigma=0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        make(gauss_eps, None, operator=op, iterations=3, sigma=0.1, mode="heun")
    with pytest.raises(ValueError, match="init must be one of"):
        make(gauss_eps, None, operator=op, iterations=3, sigma=0.1, init="ones")
    with pytest.raises(ValueError, match="measurement noise std"):
        make(gauss_eps, None, operator=op, iterations=3)
    with pytest.raises(ValueError, match="prior_steps >= 2"):
        make(gauss_eps, None, operator=op, iterations=3, sigma=0.1, prior_steps=1)
    from jaxdiff.diffusion import make_schedule

    with pytest.raises(
        ValueError, match="pnpdm: the model's noise schedule is not the continuous VP"
    ):
        make(gauss_eps, make_schedule(1000, "cosine"), operator=op, iterations=3, sigma=0.1)
    for bad in ({"rho": 0.0}, {"rho_decay": 1.5}, {"rho_min": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make.check_hparams(bad)
    sample = make(gauss_eps, None, operator=op, iterations=3, sigma=0.1, prior_steps=4)
    with pytest.raises(ValueError, match=r"y has shape \(2, 2, 1\)"):
        sample(PARAMS, jax.random.key(0), jnp.zeros((2, 2, 1)), op.sample(None))
    with pytest.raises(ValueError, match="needs the measurement"):
        sample(PARAMS, jax.random.key(0), None, op.sample(None))
