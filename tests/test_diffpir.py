"""DiffPIR: parity with the official main_ddpir_*.py run (tests/fixtures/diffpir, image 0 of the
shared b2 fixtures), the data-proximal closed forms against dense solves, the sampler against the
exact posterior of a linear-Gaussian problem, batch-size invariance, one compile per sweep and
errors on bad input."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.diffusion.diffpir_schedule import make_grid, time_grid
from jaxdiff.operators import get_operator
from jaxdiff.operators.base import Operator
from jaxdiff.operators.proximal import CircularBlur, data_prox, fft_prox, mask_prox
from jaxdiff.samplers import batched, get_sampler
from tests.gaussian_prior import GaussianPrior

FIX = pathlib.Path(__file__).parent / "fixtures" / "diffpir"
SHAPE = (4, 4, 1)
SCHED = make_schedule(1000, variance_type="fixed_large")
GP = GaussianPrior(SHAPE, SCHED.train_alphas_cumprod)
PARAMS = GP.params()


def _replay(name, teacher=True):
    from jaxdiff.parity.diffpir import replay

    with jax.default_matmul_precision("highest"):
        return replay(FIX / name, teacher=teacher)


def _failed(res):
    return {k: v for k, v in res["arrays"].items() if not v.get("pass")}


def test_parity_inpaint_random():
    """Whole trajectory of the official float32 run (x_t <= 1e-3, measured 6.3e-5), x_T, rho_t,
    the grid and tables; the teacher-forced steps are in the slow test below."""
    res = _replay("diffpir_inpaint_random_b1.npz", teacher=False)
    assert res["pass"], _failed(res)
    assert res["arrays"]["x_t"]["max_abs_err"] < 2e-4


@pytest.mark.slow
def test_parity_inpaint_teacher_forced():
    """Teacher-forced steps (README tolerances: eps 1e-4, x0 2e-3, prox 1e-5, update 1e-5)."""
    res = _replay("diffpir_inpaint_random_b1.npz")
    assert res["pass"], _failed(res)
    assert {"tf_eps_model", "tf_x0_model", "tf_x0_prox", "tf_update"} <= set(res["arrays"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffpir_deblur_gaussian_b1.npz", "diffpir_sr_x4_b1.npz"])
def test_parity_deblur_and_sr(name):
    """FFT prox vs the float64 prox of the same inputs (0.2 / 2e-3 / 5e-4; measured 1.2e-3 at
    step 0, where the official float32 Woodbury form is off by 0.14), x_t vs the float64 replay
    <= 1e-3 (measured 4.1e-4 deblur, 5.8e-5 SR) and vs the official float32 x_t within 3x its
    own float32-vs-float64 difference."""
    res = _replay(name)
    assert res["pass"], _failed(res)
    assert res["arrays"]["x_t_vs_f64replay"]["max_abs_err"] < 1e-3


def test_time_grids_are_the_scripts():
    assert time_grid(1000, 10, "quad") == [0, 333, 471, 577, 666, 745, 816, 881, 942, 999]
    assert time_grid(1000, 4, "uniform") == [0, 250, 500, 750, 999]
    g = make_grid(SCHED.train_alphas_cumprod, 10, "quad")
    assert g.t_i.tolist() == [999, 666, 528, 422, 333, 254, 183, 118, 57, 0]
    assert g.t_im1[:-1].tolist() == g.t_i[1:].tolist() and g.t_im1[-1] == -1
    assert make_grid(SCHED.train_alphas_cumprod, 10, "quad", t_start=500).t_i[0] == 422
    assert get_sampler("diffpir").num_evaluations(100) == 99
    with pytest.raises(ValueError, match="unknown skip_type 'cubic'"):
        time_grid(1000, 10, "cubic")
    with pytest.raises(ValueError, match="iter_num must be in"):
        time_grid(1000, 1)


def _dense(op, p, shape):
    n = int(np.prod(shape))
    f = lambda v: op.apply(p, v.reshape(shape)).ravel()  # noqa: E731
    return np.asarray(jax.jacobian(f)(jnp.zeros(n, jnp.float64)))


@pytest.mark.parametrize("sf", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_prox_closed_forms_equal_the_dense_solve(sf):
    """argmin ||y - A x||^2 + rho ||x - z||^2 by a dense float64 solve, for the circular blur
    (+ decimation), masks and CG on a blur with reflect padding (no closed form)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        shape = (8, 8, 2)
        k = rng.uniform(0, 1, (3, 5))
        op = CircularBlur(shape, kernel=k / k.sum(), sf=sf)
        p = {"kernel": jnp.asarray(k / k.sum())}
        a = _dense(op, p, shape)
        z = rng.normal(size=shape)
        y = rng.normal(size=op.output_shape())
        for rho in (1e-3, 0.7):
            want = np.linalg.solve(
                a.T @ a + rho * np.eye(a.shape[1]), a.T @ y.ravel() + rho * z.ravel()
            )
            fb = op.otf(p, jnp.float64)
            for form in ("stable", "official"):
                got = fft_prox(fb, jnp.asarray(y), jnp.asarray(z), rho, sf, form)
                np.testing.assert_allclose(np.ravel(got), want, atol=1e-9)
        m = (rng.uniform(size=shape) < 0.5).astype(float)
        y_img = rng.normal(size=shape)
        got = mask_prox(m, y_img, z, 0.3)
        np.testing.assert_allclose(got, np.where(m > 0, (y_img + 0.3 * z) / 1.3, z), atol=1e-12)
        blur = get_operator("gaussian_blur", image_shape=shape, kernel_size=3, std=1.0)
        bp = blur.sample(None)
        a = _dense(blur, bp, shape)
        rho = 0.05
        want = np.linalg.solve(
            a.T @ a + rho * np.eye(a.shape[1]), a.T @ y_img.ravel() + rho * z.ravel()
        )
        prox, kind = data_prox(blur, cg_iters=200)
        assert kind == "cg"
        got = prox(bp, jnp.asarray(y_img), jnp.asarray(z), rho)
        np.testing.assert_allclose(np.ravel(got), want, atol=1e-8)


class MaskedBlur(Operator):
    """y = mask * blur(x) on the 4x4 test image: linear, no closed-form prox (CG)."""

    name = "masked_blur"

    def __init__(self, mask):
        super().__init__(SHAPE)
        self.mask = mask

    def _apply(self, op_params, x):
        k = jnp.outer(jnp.array([0.25, 0.5, 0.25]), jnp.array([0.25, 0.5, 0.25]))
        return self.mask * jax.scipy.signal.convolve2d(x[..., 0], k, mode="same")[..., None]


def linear_gaussian(seed=1, sigma=0.05):
    mask = jnp.asarray((np.random.default_rng(3).uniform(size=SHAPE) < 0.6).astype(np.float32))
    op = MaskedBlur(mask)
    a = np.asarray(jax.jacobian(lambda v: op.apply({}, v.reshape(SHAPE)).ravel())(jnp.zeros(16)))
    rng = np.random.default_rng(seed)
    x_true = rng.multivariate_normal(GP.mu, GP.cov)
    y = a @ x_true + sigma * np.asarray(mask).ravel() * rng.normal(size=16)
    pm, pc = GP.linear_posterior(a, y, sigma)
    return op, jnp.asarray(y.reshape(SHAPE), jnp.float32), pm, pc


@pytest.mark.slow
def test_output_lands_near_the_exact_posterior_mean():
    """Blur + 40% missing pixels, sigma 0.05 ([-1, 1] units), 100 quad steps, 400 samples,
    zeta 1, CG prox, lambda_ = 4: rho_t = sigma^2 / sigma_bar_t^2, so the data step is the
    MAP of N(x0_hat, sigma_bar_t^2 I) times the likelihood. DiffPIR is an approximation (it
    treats x0 | x_t as that Gaussian), so the check is: the sample mean lies within 0.2
    posterior std of the exact posterior mean in every pixel (measured 0.085; lambda_ = 1, the
    official unit convention's 4x weaker data term, gives 0.84), while the prior mean is 1.47
    posterior std away; no sample diverges."""
    op, y, pm, pc = linear_gaussian()
    ps = np.sqrt(np.diag(pc))
    assert np.abs((GP.mu - pm) / ps).max() > 1.4
    sample = get_sampler("diffpir")(
        GP.model_fn, SCHED, operator=op, iter_num=100, clip_denoised=False, cg_iters=32,
        lambda_=4.0, zeta=1.0, sigma=0.05,
    )  # fmt: skip
    n = 400
    res = jax.jit(batched(sample))(
        PARAMS, jax.random.split(jax.random.key(1), n), jnp.broadcast_to(y, (n, *SHAPE))
    )
    assert np.all(np.asarray(res.diverged_at) == -1)
    err = np.abs((np.asarray(res.x0, np.float64).reshape(n, -1).mean(0) - pm) / ps)
    assert err.max() < 0.2, err.max()


TRACES = []


def counting_model(p, x, t):
    TRACES.append(1)
    return GP.model_fn(p, x, t)


def test_batch_size_invariance_and_one_compile_per_sweep():
    """Image 0 alone == image 0 in a batch of 3 (<= 1e-6); a sweep over 3 (lambda_, zeta) pairs
    is one compiled call (traced once, one cache entry across two calls) whose entries equal
    separate runs."""
    mask = (np.random.default_rng(0).uniform(size=SHAPE) < 0.5).astype(np.float32)
    op = get_operator("inpaint", image_shape=SHAPE, mask=mask)
    sample = get_sampler("diffpir")(
        counting_model, SCHED, operator=op, iter_num=8, sigma=0.05, zeta=0.3, lambda_=2.0
    )
    keys = jax.random.split(jax.random.key(0), 3)
    y = 0.3 * jax.random.normal(jax.random.key(1), (3, *SHAPE))
    three = jax.jit(batched(sample, shared_op_params=True))(PARAMS, keys, y, op.sample(None))
    one = jax.jit(sample)(PARAMS, keys[0], y[0], op.sample(None))
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-6, rtol=0)
    assert not np.allclose(three.x0[1], one.x0, atol=1e-2)

    sweep = jax.jit(batched(sample, sweep=True, shared_op_params=True))
    hp = {"lambda_": jnp.array([1.0, 2.0, 8.0]), "zeta": jnp.array([0.1, 0.3, 1.0])}
    res = sweep(PARAMS, keys, y, op.sample(None), hp)
    n_traces = len(TRACES)
    sweep(PARAMS, keys, y, op.sample(None), {k: v * 0.5 for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    np.testing.assert_allclose(res.x0[1], three.x0, atol=1e-6)
    assert not np.allclose(res.x0[0], res.x0[2], atol=1e-3)


def test_bad_inputs_are_clear_errors():
    make = get_sampler("diffpir")
    pr = get_operator("phase_retrieval", image_shape=SHAPE)
    with pytest.raises(ValueError, match="diffpir: needs a linear operator"):
        make(GP.model_fn, SCHED, operator=pr, image_shape=SHAPE)
    with pytest.raises(ValueError, match="nonlinear; the data step needs a linear A"):
        data_prox(pr)
    op = CircularBlur(SHAPE, kernel=np.ones((3, 3), np.float32) / 9)
    with pytest.raises(ValueError, match="init must be one of"):
        make(GP.model_fn, SCHED, operator=op, init="zeros")
    with pytest.raises(ValueError, match="unknown skip_type"):
        make(GP.model_fn, SCHED, operator=op, iter_num=10, skip_type="log")
    sample = make(GP.model_fn, SCHED, operator=op, iter_num=10)
    y = jnp.zeros(SHAPE)
    with pytest.raises(ValueError, match="'sigma' has no value"):
        sample(PARAMS, jax.random.key(0), y, op.sample(None))
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        sample(PARAMS, jax.random.key(0), y, op.sample(None), {"sigma": 0.1, "lam": 1.0})
    with pytest.raises(ValueError, match="measurement y has shape"):
        sample(PARAMS, jax.random.key(0), jnp.zeros((2, 2, 1)), op.sample(None), {"sigma": 0.1})
    with pytest.raises(ValueError, match="sf=3 must divide"):
        CircularBlur(SHAPE, kernel=np.ones((3, 3)), sf=3)


def test_config_presets():
    from configs import diffpir as cfg
    from jaxdiff import tasks

    for task in sorted(tasks.TASKS):
        if task == "phase_retrieval":
            with pytest.raises(ValueError, match="diffpir: task 'phase_retrieval' is not supp"):
                cfg.get_config(task)
            continue
        c = cfg.get_config(task)
        assert c.method == "diffpir" and c.sampler.options.skip_type == "quad"
    c = cfg.get_config("gaussian_blur")
    assert (c.sampler.respacing, c.sampler.hparams.lambda_, c.sampler.hparams.zeta) == (
        "100",
        7.0,
        0.3,
    )
    assert cfg.get_config("box").sampler.respacing == "20"
    assert cfg.get_config("sr4").sampler.options.init == "guide"


@pytest.mark.slow
def test_inner_repeats_follow_the_scripts_loop():
    """iter_num_U = 2 against the scripts' loop written out here (inpainting closed form, init
    from y, lambda_ 1, zeta 0.5, eta 0.3, 6 quad steps): model, prox, update, then x diffused
    back from t_im1 to t_i and the step redone; NFE doubles."""
    mask = (np.random.default_rng(0).uniform(size=SHAPE) < 0.5).astype(np.float32)
    op = get_operator("inpaint", image_shape=SHAPE, mask=mask)
    kw = dict(iter_num=6, sigma=0.05, zeta=0.5, eta=0.3, lambda_=1.0, clip_denoised=False)
    sample = get_sampler("diffpir")(GP.model_fn, SCHED, operator=op, iter_num_U=2, **kw)
    assert get_sampler("diffpir").num_evaluations(6, {"iter_num_U": 2}) == 10
    rng = np.random.default_rng(1)
    y = mask * rng.normal(size=SHAPE) * 0.3
    n0 = rng.normal(size=SHAPE)
    draws = {k: rng.normal(size=(5, 2, *SHAPE)) for k in ("eta", "zeta", "renoise")}
    rep = {"x_T_noise": n0, "noise": draws}
    got = jax.jit(sample)(PARAMS, jax.random.key(0), y, op.sample(None), None, rep).x0

    g = make_grid(SCHED.train_alphas_cumprod, 6, "quad", dtype="float64")
    sa, s1 = g.tables["sqrt_alphas_cumprod"], g.tables["sqrt_1m_alphas_cumprod"]
    abar = SCHED.train_alphas_cumprod
    x = sa[999] * y + np.sqrt(s1[999] ** 2 - sa[999] ** 2 * s1[0] ** 2) * n0  # t_y = 0
    for i, (t, tm) in enumerate(zip(g.t_i[:-1], g.t_i[1:])):
        for u in range(2):
            eps = np.asarray(GP.model_fn(PARAMS, jnp.asarray(x[None], jnp.float32), np.array([t])))[
                0
            ]
            x0 = np.sqrt(1 / abar[t]) * x - np.sqrt(1 / abar[t] - 1) * eps
            rho = 1.0 * 0.025**2 / (s1[t] / sa[t]) ** 2
            x0 = (mask * y + rho * x0) / (mask + rho)
            e = (x - sa[t] * x0) / s1[t]
            es = 0.3 * s1[tm] / s1[t] * np.sqrt(g.tables["betas"][t])
            z1, z2, z3 = (draws[k][i, u] for k in ("eta", "zeta", "renoise"))
            x = sa[tm] * x0 + np.sqrt(0.5) * (np.sqrt(s1[tm] ** 2 - es**2) * e + es * z1)
            x = x + np.sqrt(0.5) * s1[tm] * z2
            if u == 0:
                a = sa[t] / sa[tm]
                x = a * x + np.sqrt(s1[t] ** 2 - a**2 * s1[tm] ** 2) * z3
    np.testing.assert_allclose(got, x, atol=1e-4)
    one = get_sampler("diffpir")(GP.model_fn, SCHED, operator=op, **kw)
    assert not np.allclose(jax.jit(one)(PARAMS, jax.random.key(0), y, op.sample(None)).x0, got)
