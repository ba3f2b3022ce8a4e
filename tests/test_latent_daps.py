"""Latent DAPS: parity with the official DAPS latent code (tests/fixtures/latent_daps), the closed
form of a linear decoder over a Gaussian latent prior (Langevin and HMC), the timestep maps,
batch-size invariance, one compile per sweep, clear errors."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import annealing, make_schedule
from jaxdiff.parity import latent_daps as parity
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.daps_steps import trained_timestep
from jaxdiff.samplers.latent_common import linear_latent
from tests.gaussian_prior import GaussianPrior

FAST = ["latent_daps_inpaint_random_hmc_b1"]
SLOW = [
    "latent_daps_down_sampling_hmc_b2",
    "latent_daps_inpaint_box_hmc_b2",
    "latent_daps_gaussian_blur_langevin_b2",
]
STATES = ("z_t", "z0hat", "z0y", "ode_z", "mcmc_z", "x_t", "x0hat", "x0y", "sample")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_latent_daps_trajectory(fixtures_dir, name):
    """Every latent and decoded state within 1e-5 * max(1, max|ref|) floored at 3x the
    official code's own float32-vs-float64 difference (measured: at most 0.27 of that
    tolerance), the loss to 1e-5 relative, grids and timesteps exact."""
    with jax.default_matmul_precision("highest"):
        r = parity.replay(fixtures_dir / "latent_daps" / f"{name}.npz")
    assert r["pass"], r
    a = r["arrays"]
    for key in STATES:
        assert a[key]["max_ratio_to_tol"] < 0.5, (key, a[key])
    assert a["mcmc_loss"]["max_rel_err"] < 1e-5
    assert a["sigma_steps"]["max_abs_err"] == 0 and a["ode_sigma"]["max_abs_err"] == 0


@pytest.mark.slow
def test_float64_replay_lands_on_the_official_float64_run(fixtures_dir):
    """float64: our distance to the float32 reference is the reference's own float64 level
    (our float64 Latent DAPS is torch's float64 one up to float64 rounding)."""
    name = "latent_daps_down_sampling_hmc_b2"
    r = parity.replay(fixtures_dir / "latent_daps" / f"{name}.npz", dtype="float64")
    assert r["pass"], r
    ours = np.array(r["arrays"]["z_t"]["per_step_max_abs_err"])
    sidecar = json.loads((fixtures_dir / "latent_daps" / "latent_daps.json").read_text())
    ref = np.array(
        sidecar["tasks"]["down_sampling_hmc_b2"]["f64_replay"]["max_abs_diff_z_t_per_step"]
    )
    np.testing.assert_allclose(ours, ref, rtol=0.05, atol=1e-6)


# ---- a linear decoder over a Gaussian latent prior with an exact denoiser ------------------------
LS, IS = (2, 2, 1), (2, 2, 2)
GP = GaussianPrior(LS, np.linspace(0.99, 0.01, 4))
RNG = np.random.default_rng(5)
M = RNG.normal(size=(8, 4)) / 3 + np.vstack([np.eye(4), np.eye(4)]) * 0.8
A = np.zeros((3, 8))
A[0, 0], A[0, 5], A[1, 2], A[2, 7] = 1.0, 0.5, 1.0, 1.0
SIGMA_Y = 0.2
FNS = linear_latent(M, LS, IS)
_L, _V = np.linalg.eigh(GP.cov)
PARAMS = {k: jnp.asarray(v, jnp.float32) for k, v in {"mu": GP.mu, "l": _L, "V": _V}.items()}
OPTS = dict(annealing_steps=10, ode_steps=3, mcmc_steps=50, lr=2e-3, lr_min_ratio=0.5)


def gauss_eps(p, z, t):
    """Exact eps of N(mu, cov) at the fractional VP timestep t (the 'vp' timestep map)."""
    abar = annealing.vp_alphas_cumprod(t)[:, None]
    flat = z.reshape(z.shape[0], -1)
    r = (flat - jnp.sqrt(abar) * p["mu"]) @ p["V"]
    eps = (r * jnp.sqrt(1 - abar) / (abar * p["l"] + 1 - abar)) @ p["V"].T
    return eps.reshape(z.shape)


def forward(x):
    return jnp.asarray(A, x.dtype) @ x.reshape(-1)


def moments(sample, y, opts, algo, momentum=0.0):
    """The exact mean and covariance of Latent DAPS's decoded output here (float64): every Euler
    step, MCMC update and re-noise is affine in the state plus independent Gaussian noise."""
    d, mu, cov = GP.d, GP.mu, GP.cov
    eye, zero = np.eye(d), np.zeros((d, d))
    b_mat = A @ M  # the operator seen from the latent
    sig, grid = sample.sigmas.astype(np.float64), sample.ode_grid.astype(np.float64)
    n, tau = len(sig) - 1, SIGMA_Y
    m, c = np.zeros(d), sig[0] ** 2 * eye
    hess, lin_y = 2 * b_mat.T @ b_mat / tau**2, 2 * b_mat.T @ y / tau**2
    for i in range(n):
        lin, off = eye, np.zeros(d)  # z0_hat = lin z_t + off
        for k in range(grid.shape[1] - 1):
            t, t_next = grid[i, k], grid[i, k + 1]
            g = cov @ np.linalg.inv(cov + t**2 * eye)
            step = eye + (t - t_next) / t * (g - eye)
            lin, off = step @ lin, step @ off + (t - t_next) / t * (eye - g) @ mu
        s2 = sig[i] ** 2
        lr = opts["lr"] * (1 + i / (n + 1) * (opts["lr_min_ratio"] - 1))
        s_x, s_t, s_c = (
            -(hess + eye / s2),
            lin / s2,
            off / s2 + lin_y,
        )  # score = s_x z + s_t z_t + s_c
        if algo == "langevin":  # state [z; z_t]
            mz = np.concatenate([lin @ m + off, m])
            cz = np.block([[lin @ c @ lin.T, lin @ c], [c @ lin.T, c]])
            f = np.block([[eye + lr * s_x, lr * s_t], [zero, eye]])
            b = np.concatenate([lr * s_c, np.zeros(d)])
            g_noise = np.vstack([np.sqrt(2 * lr) * eye, zero])
        else:  # state [z; v; z_t], v ~ N(0, I) at the start
            r, q = np.sqrt(lr), np.sqrt(2 * (1 - momentum))
            mz = np.concatenate([lin @ m + off, np.zeros(d), m])
            cz = np.block([[lin @ c @ lin.T, zero, lin @ c], [zero, eye, zero],
                           [c @ lin.T, zero, c]])  # fmt: skip
            f = np.block([[eye + r * r * s_x, r * momentum * eye, r * r * s_t],
                          [r * s_x, momentum * eye, r * s_t], [zero, zero, eye]])  # fmt: skip
            b = np.concatenate([r * r * s_c, r * s_c, np.zeros(d)])
            g_noise = np.vstack([r * q * eye, q * eye, zero])
        for _ in range(opts["mcmc_steps"]):
            mz, cz = f @ mz + b, f @ cz @ f.T + g_noise @ g_noise.T
        m, c = mz[:d], cz[:d, :d] + sig[i + 1] ** 2 * eye
    return M @ m, M @ c @ M.T


# Langevin's algebra is pixel DAPS's (tests/test_daps.py): its latent run is the slow variant
@pytest.mark.slow
@pytest.mark.parametrize("algo", [pytest.param("langevin", marks=pytest.mark.slow), "hmc"])
def test_linear_gaussian_latent_closed_form(algo):
    """1024 samples (no gradient clamp, 'vp' map with the exact denoiser): the decoded sample
    mean within 4 standard errors of Latent DAPS's exact output mean and the variances within
    15 %; that exact mean lies within 0.15 of the true image posterior mean M E[z | y] (measured
    0.13 Langevin, 0.14 HMC), while the prior mean M mu is 0.71 away (DAPS's Gaussian
    approximation of p(z0 | z_t) biases it at finite sigma and step count)."""
    x_true = M @ (GP.mu + np.linalg.cholesky(GP.cov) @ np.array([2.0, -2.0, 2.0, -2.0]))
    y = A @ x_true + SIGMA_Y * np.random.default_rng(7).normal(size=3)
    mom = 0.5 if algo == "hmc" else 0.0
    sample = get_sampler("latent_daps")(
        gauss_eps, None, operator=forward, latent=FNS, tau=SIGMA_Y, mc_algo=algo,
        momentum=mom, grad_clip=None, timestep_map="vp", **OPTS,
    )  # fmt: skip
    b = 1024
    keys = jax.random.split(jax.random.key(0), b)
    ys = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (b, 3))
    x = np.asarray(jax.jit(batched(sample))(PARAMS, keys, ys).x0).reshape(b, -1)
    m, c = moments(sample, y, OPTS, algo, mom)
    se = np.sqrt(np.diag(c) / b)
    assert np.all(np.abs(x.mean(0) - m) < 4 * se), (x.mean(0), m, se)
    np.testing.assert_allclose(x.var(0), np.diag(c), rtol=0.15)
    pm, _ = GP.linear_posterior(A @ M, y, SIGMA_Y)
    assert np.abs(m - M @ pm).max() < 0.15, np.abs(m - M @ pm).max()
    assert np.abs(M @ GP.mu - M @ pm).max() > 0.4


def test_timestep_maps():
    """'trained' reads the model's own table (its step k at its sigma_k, linear in log sigma in
    between); 'vp' is VPPrecond's continuous map. On the LDM schedule they differ (sigma 10 ->
    736.8 vs 675.4: the official code's map, pitfall 1 of the fixture README)."""
    ldm = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    abar = np.cumprod(1 - ldm)
    sig_k = np.sqrt((1 - abar) / abar)
    np.testing.assert_allclose(trained_timestep(sig_k[[3, 500, 998]], abar), [3, 500, 998])
    assert abs(float(trained_timestep(10.0, abar)) - 736.8) < 0.1
    assert abs(float(annealing.vp_timestep(10.0, dtype=np.float64)) - 675.37) < 0.01
    sched = make_schedule(alphas_cumprod=abar, convention="diffusers")
    common = dict(operator=forward, latent=FNS, annealing_steps=3, ode_steps=2, mcmc_steps=1)
    tr = get_sampler("latent_daps")(gauss_eps, sched, **common)
    vp = get_sampler("latent_daps")(gauss_eps, sched, timestep_map="vp", **common)
    np.testing.assert_allclose(tr.c_noise, trained_timestep(tr.ode_grid[:, :2], abar), rtol=1e-6)
    assert tr.c_noise[0, 0] > vp.c_noise[0, 0] + 50
    with pytest.raises(ValueError, match="timestep_map 'trained' needs the model's schedule"):
        get_sampler("latent_daps")(gauss_eps, None, **common)


TRACES = []


def counting_eps(p, z, t):
    TRACES.append(1)
    return gauss_eps(p, z, t)


@pytest.mark.slow
def test_batch_size_invariance_and_one_compile_per_sweep():
    """A sweep over three (lr, momentum) pairs on a batch of 3 is one compiled program (traced
    once); image 0 of its default entry equals image 0 run alone (per-image keys, no coupling)."""
    sample = get_sampler("latent_daps")(
        counting_eps, None, operator=forward, latent=FNS, tau=SIGMA_Y, timestep_map="vp",
        annealing_steps=4, ode_steps=2, mcmc_steps=5, lr=1e-3, momentum=0.5,
    )  # fmt: skip
    keys = jax.random.split(jax.random.key(1), 3)
    ys = 0.3 * jax.random.normal(jax.random.key(2), (3, 3))
    sweep = jax.jit(batched(sample, sweep=True))
    hp = {"lr": jnp.array([5e-4, 1e-3, 2e-3]), "momentum": jnp.array([0.2, 0.5, 0.9])}
    res = sweep(PARAMS, keys, ys, None, hp)
    n_traces = len(TRACES)
    sweep(PARAMS, keys, ys, None, {k: v[::-1] for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    one = jax.jit(sample)(PARAMS, keys[0], ys[0])
    np.testing.assert_allclose(res.x0[1, 0], one.x0, atol=2e-6, rtol=0)
    assert res.x0.shape == (3, 3, *IS)
    assert not np.allclose(res.x0[0], res.x0[2], atol=1e-3)


def test_bad_inputs_are_clear_errors():
    make = get_sampler("latent_daps")
    with pytest.raises(ValueError, match="latent_daps: a latent-space method needs a latent prior"):
        make(gauss_eps, None, operator=forward, annealing_steps=2)
    with pytest.raises(ValueError, match="daps: a pixel-space method was given a latent prior"):
        get_sampler("daps")(gauss_eps, None, operator=forward, latent=FNS, annealing_steps=2)
    base = dict(operator=forward, latent=FNS, annealing_steps=2, timestep_map="vp")
    with pytest.raises(ValueError, match="mc_algo 'mh'"):
        make(gauss_eps, None, **base, mc_algo="mh")
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        make(gauss_eps, None, **base, grad_clip=0.0)
    with pytest.raises(ValueError, match="timestep_map 'edm'"):
        make(gauss_eps, None, **{**base, "timestep_map": "edm"})
    with pytest.raises(ValueError, match="mcmc_steps must be an integer >= 1"):
        make(gauss_eps, None, **base, mcmc_steps=0)
    with pytest.raises(ValueError, match="momentum"):
        make.check_hparams({"momentum": 1.0}, "latent_daps")
    sample = make(gauss_eps, None, **base, mcmc_steps=2)
    rep = {
        "x_T": jnp.zeros(LS),
        "noise": {"mcmc": jnp.zeros((2, 2, *LS)), "renoise": jnp.zeros((2, *LS))},
    }
    with pytest.raises(ValueError, match='"velocity": \\(N, ...\\)'):
        sample(PARAMS, jax.random.key(0), jnp.zeros(3), replay=rep)
    with pytest.raises(ValueError, match="latent_daps: this sampler needs the measurement y"):
        sample(PARAMS, jax.random.key(0), None)


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    """The tiny SD pipeline (random weights, NOT a trained prior) converted once."""
    from jaxdiff.convert.core import convert

    out = tmp_path_factory.mktemp("latent") / "sd_tiny"
    sd = pathlib.Path(__file__).parent / "fixtures" / "latent" / "sd_tiny"
    convert(sd, out, progress=False)
    return out


def _config(model, **options):
    from jaxdiff import config_lib

    c = config_lib.config_module("latent_daps").get_config("sr2")
    c.model = str(model)
    c.sampler.respacing = "3"
    c.sampler.options.mcmc_steps = 2
    c.sampler.options.update(options)
    return c


@pytest.mark.slow
def test_driver_builds_latent_daps_from_a_latent_prior_folder(latent_folder):
    """`model=` a latent pipeline folder: the annealing steps are the respacing, the network
    timesteps the prior's own schedule ('trained'; 'vp' on request); a pixel model is refused."""
    from jaxdiff.experiment import DEMO_PRIOR, LatentModel, build

    exp = build(_config(latent_folder))
    assert isinstance(exp.model, LatentModel) and exp.image_size == 32
    assert exp.method.info["num_steps"] == 3
    with pytest.raises(ValueError, match="latent_daps: a latent-space method needs a latent"):
        build(_config(DEMO_PRIOR))


@pytest.mark.slow
def test_driver_pipeline_runs_and_is_batch_invariant(latent_folder):
    """The driver's per-image pipeline on the tiny SD prior: finite, image 1 of a batch of 2
    equals the same image run alone."""
    from jaxdiff.experiment import build
    from jaxdiff.runner import image_keys

    exp = build(_config(latent_folder))
    one = exp.pipeline()
    h = {k: jnp.asarray(v) for k, v in exp.default_hparams().items()}
    x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3), minval=-1, maxval=1)
    keys = jnp.asarray(image_keys(0, [0, 1]))
    with jax.default_matmul_precision("highest"):
        two = jax.jit(jax.vmap(one, (None, 0, 0, None), axis_name="batch"))(exp.params, keys, x, h)
        alone = jax.jit(one)(exp.params, keys[1], x[1], h)
    assert np.all(np.asarray(two["diverged"]) == -1)
    assert two["x_hat"].shape == (2, 32, 32, 3) and np.all(np.isfinite(two["x_hat"]))
    np.testing.assert_allclose(two["x_hat"][1], alone["x_hat"], atol=1e-4)
