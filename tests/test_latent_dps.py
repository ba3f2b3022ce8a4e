"""Latent DPS and the latent samplers' plumbing: the closed form of a linear decoder over a
Gaussian latent prior, batch-size invariance, one compile per sweep, the latent-prior need's
errors both ways, and the driver path from a latent prior folder."""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.errors import ConfigError
from jaxdiff.operators import get_noise, get_operator
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.latent_common import LatentFns, ldm_ddim_tables, linear_latent
from tests.gaussian_prior import GaussianPrior

ROOT = pathlib.Path(__file__).resolve().parent.parent
SD = ROOT / "tests" / "fixtures" / "latent" / "sd_tiny"
LS, IS = (4, 4, 1), (4, 4, 2)
SIGMA = 0.05


@functools.cache
def problem():
    """A 16-d correlated Gaussian latent prior (exact eps), a linear decoder R^16 -> R^32 and
    random inpainting of a third of the decoded pixels with sigma 0.05 noise."""
    sched = make_schedule(1000, respacing="ldm100")
    gp = GaussianPrior(LS, sched.train_alphas_cumprod, seed=3)
    rng = np.random.default_rng(0)
    m = rng.normal(size=(32, 16)) / 4 + np.vstack([np.eye(16), np.eye(16)]) * 0.7
    fns = linear_latent(m, LS, IS)
    op = get_operator("inpaint", image_shape=IS, mask=np.arange(32).reshape(IS) % 3 > 0)
    p = op.sample(jax.random.key(0))
    a = np.stack([np.asarray(op.apply(p, jnp.asarray(e.reshape(IS)))).ravel() for e in np.eye(32)])
    a = a.T
    z_true = gp.mu + np.linalg.cholesky(gp.cov) @ rng.normal(size=16)
    y = (a @ m @ z_true + SIGMA * rng.normal(size=a.shape[0])).astype(np.float32)
    return sched, gp, m, fns, op, p, a, y


def test_ldm_ddim_grid_and_tables():
    """CompVis make_ddim_timesteps 'uniform' (+1) and make_ddim_sampling_parameters: the last
    step's abar_prev is abar[0]; at 1000 steps the alphas are read at t - 1."""
    sched = make_schedule(1000, respacing="ldm10")
    assert list(sched.timestep_map) == list(range(1, 1000, 100))
    tab = ldm_ddim_tables(sched)
    abar = sched.train_alphas_cumprod
    assert tab["abar_prev"][0] == abar[0] and tab["abar_prev"][3] == abar[201]
    np.testing.assert_array_equal(tab["abar"], abar[1::100])
    assert list(make_schedule(1000, respacing="ldm1000").timestep_map) == list(range(1000))


@pytest.mark.slow
def test_gaussian_latent_closed_form():
    """Linear decoder + Gaussian latent prior: the posterior of the image is Gaussian. 1000
    samples, ldm100, eta 1. scale 0 samples the prior (its mean within 0.15 prior std of
    M mu); scale 0.5 puts the sample mean within 0.8 posterior std of the exact posterior mean
    on every pixel (measured 0.61; standard error 0.03), while the prior mean is 28 posterior
    std away. Latent DPS is approximate (the DPS step through the decoder), hence 0.8."""
    sched, gp, m, fns, op, p, a, y = problem()
    pm, pc = gp.linear_posterior(a @ m, y, SIGMA)
    xm, xs = m @ pm, np.sqrt(np.diag(m @ pc @ m.T))
    prior_m, prior_s = m @ gp.mu, np.sqrt(np.diag(m @ gp.cov @ m.T))
    assert (np.abs(prior_m - xm) / xs).max() > 20
    noise = get_noise("gaussian", sigma=SIGMA)
    sample = get_sampler("latent_dps")(gp.model_fn, sched, operator=op, noise=noise, latent=fns)
    n = 1000
    run = jax.jit(batched(sample, shared_op_params=True, sweep=True))
    hp = {"scale": jnp.array([0.0, 0.5]), "eta": jnp.ones(2)}
    yb = jnp.broadcast_to(jnp.asarray(y).reshape(IS), (n, *IS))
    res = run(gp.params(), jax.random.split(jax.random.key(1), n), yb, p, hp)
    assert np.all(np.asarray(res.diverged_at) == -1)
    prior, post = (np.asarray(res.x0[i], np.float64).reshape(n, -1) for i in (0, 1))
    assert (np.abs(prior.mean(0) - prior_m) / prior_s).max() < 0.15
    err = (np.abs(post.mean(0) - xm) / xs).max()
    assert err < 0.8, err


TRACES = []


def counting_model(params, z, t):
    TRACES.append(1)
    return problem()[1].model_fn(params, z, t)


@pytest.mark.slow
def test_batch_size_invariance_and_one_compile_per_sweep():
    """Image 0 alone == image 0 in a batch of 3 (float32 rounding), per-image keys; a sweep of
    three (scale, eta) pairs is one compiled call, its first entry the plain batched run."""
    sched, gp, m, fns, op, p, a, y = problem()
    sched = make_schedule(1000, respacing="ldm10")
    noise = get_noise("gaussian", sigma=SIGMA)
    sample = get_sampler("latent_dps")(
        counting_model, sched, operator=op, noise=noise, latent=fns, scale=0.5
    )
    params = gp.params()
    keys = jax.random.split(jax.random.key(0), 3)
    ys = jnp.stack([jnp.asarray(y).reshape(IS) * s for s in (1.0, 0.5, -1.0)])
    three = jax.jit(batched(sample, shared_op_params=True))(params, keys, ys, p)
    one = jax.jit(sample)(params, keys[0], ys[0], p)
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-5, rtol=1e-5)
    assert three.x0.shape == (3, *IS)

    sweep = jax.jit(batched(sample, sweep=True, shared_op_params=True))
    hp = {"scale": jnp.array([0.5, 0.1, 0.0]), "eta": jnp.array([0.0, 1.0, 0.5])}
    res = sweep(params, keys, ys, p, hp)
    n_traces = len(TRACES)
    sweep(params, keys, ys, p, {k: v[::-1] for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    np.testing.assert_allclose(res.x0[0], three.x0, atol=1e-5, rtol=1e-5)
    assert not np.allclose(res.x0[1], res.x0[2], atol=1e-3)


def test_the_latent_prior_need_is_checked_both_ways():
    sched, gp, m, fns, op, p, a, y = problem()
    with pytest.raises(ValueError, match="latent_dps: a latent-space method needs a latent prior"):
        get_sampler("latent_dps")(gp.model_fn, sched, operator=op)
    with pytest.raises(ValueError, match="dps: a pixel-space method was given a latent prior"):
        get_sampler("dps")(gp.model_fn, sched, operator=op, latent=fns)
    with pytest.raises(ValueError, match=r"decodes \(4, 4, 2\) images, but operator"):
        big = get_operator("denoise", image_shape=(8, 8, 2))
        get_sampler("latent_dps")(gp.model_fn, sched, operator=big, latent=fns)
    with pytest.raises(ValueError, match="latent must be a LatentFns"):
        get_sampler("latent_dps")(gp.model_fn, sched, operator=op, latent=(fns.decode,))
    with pytest.raises(ConfigError, match="scale"):
        get_sampler("latent_dps").check_hparams({"scale": -1.0})
    sample = get_sampler("latent_dps")(gp.model_fn, sched, operator=op, latent=fns)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        sample(gp.params(), jax.random.key(0), jnp.zeros(IS), p, {"gamma": 0.1})
    with pytest.raises(ValueError, match=r"y has shape \(2, 2, 1\)"):
        sample(gp.params(), jax.random.key(0), jnp.zeros((2, 2, 1)), p)
    assert isinstance(fns, LatentFns) and fns.image_shape == IS


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    """The tiny SD pipeline (random weights, NOT a trained prior) converted once."""
    from jaxdiff.convert.core import convert

    out = tmp_path_factory.mktemp("latent") / "sd_tiny"
    convert(SD, out, progress=False)
    return out


def _config(model, method="latent_dps", task="sr2"):
    from jaxdiff import config_lib

    c = config_lib.base_config(task)
    c.model, c.method = str(model), method
    c.sampler.respacing = "ldm2"
    return c


@pytest.mark.slow
def test_driver_builds_latent_methods_from_a_latent_prior_folder(latent_folder):
    """`model=` a latent pipeline folder: the image size is the decoder's, the schedule the
    prior's scheduler on the ldm grid; a pixel method on it and a latent method on a pixel
    model are refused with one ValueError each."""
    from jaxdiff.experiment import DEMO_PRIOR, LatentModel, build

    exp = build(_config(latent_folder))
    assert isinstance(exp.model, LatentModel) and exp.image_size == 32
    assert exp.method.info["num_steps"] == 2 and exp.params["context"].shape[-1] == 32
    with pytest.raises(ValueError, match="dps: a pixel-space method was given a latent prior"):
        build(_config(latent_folder, "dps"))
    with pytest.raises(ValueError, match="latent_dps: a latent-space method needs a latent"):
        build(_config(DEMO_PRIOR))


@pytest.mark.slow
def test_driver_pipeline_batch_invariance(latent_folder):
    """The driver's per-image pipeline on the tiny SD prior: image 1 of a batch of 2 equals the
    same image run alone (its key is fold_in(seed, index))."""
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
    assert two["x_hat"].shape == (2, 32, 32, 3)
    np.testing.assert_allclose(two["x_hat"][1], alone["x_hat"], atol=1e-4)
