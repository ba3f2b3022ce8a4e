"""TMPD: parity with azula's TMPDenoiser and tmpdjax's KPDDPM / KPDDPMdiag / KPDDPMplus (whole
chain and teacher-forced steps), the exact posterior mean with a Gaussian prior, batch-size
invariance, one compile per sweep, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.operators import get_operator
from jaxdiff.samplers import batched, get_sampler
from tests.test_mmps import GP, SCHED, SHAPE, linear_gaussian, replay_fixture

FAST = ["tmpd_plus_sr_avgpool"]
SLOW = ["tmpd_sr_avgpool", "tmpd_full_sr_avgpool", "tmpd_diag_sr_avgpool"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_parity(fixtures_dir, name):
    """Every recorded state of the reference chain and every step alone from its own input,
    within the README's rule (3x the reference's float64 level, capped)."""
    r = replay_fixture(fixtures_dir, "tmpd", name)
    want = {"tmpd_full_sr_avgpool": "full", "tmpd_diag_sr_avgpool": "diag"}.get(name, "rowsum")
    assert r["options"]["covariance"] == want


def _worst(covariance, op_name, solver="dense", **cfg):
    """Max over four steps of |x0_y - E[x0 | x_t, y]| / posterior std (float64)."""
    sigma = 0.1
    with jax.enable_x64(True):
        sched, gp, op, p, _, x_true, _, y_img, exact = linear_gaussian(op_name, sigma, **cfg)
        sample = get_sampler("tmpd")(
            gp.model_fn, sched, operator=op, sigma=sigma, covariance=covariance, solver=solver,
            iterations=8, dtype=jnp.float64,
        )  # fmt: skip
        step = jax.jit(sample.update)
        rng = np.random.default_rng(3)
        worst = []
        for k in (19, 10, 3, 0):
            a = sched.tables["alphas_cumprod"][k]
            x_t = np.sqrt(a) * x_true + np.sqrt(1 - a) * rng.normal(size=16)
            _, rec = step(gp.params(dtype=np.float64), jnp.asarray(x_t.reshape(SHAPE)), k,
                          jnp.zeros(SHAPE), y_img.astype(jnp.float64), p)  # fmt: skip
            mean, std = exact(x_t, a)
            worst.append(float((np.abs(np.asarray(rec["x0_y"]).ravel() - mean) / std).max()))
        return max(worst[:3]), max(worst)


@pytest.mark.slow
def test_gaussian_prior_full_form_is_the_exact_posterior_mean():
    """Gaussian prior (exact eps, exact covariance), 2x super-resolution (4 measurements):
    the full form (dense solve, or 8 CG steps) is E[x0 | x_t, y] to 1e-6 posterior std in
    float64; the diagonal and row-sum forms are approximations (0.05-1 posterior std off),
    exact again when there is one measurement (a single observed pixel: C is a scalar)."""
    for solver in ("dense", "cg"):
        assert _worst("full", "super_resolution", solver)[1] < 1e-6
    for form in ("diag", "rowsum"):
        assert _worst(form, "super_resolution")[0] > 0.05
    mask = np.zeros((4, 4)).astype(bool)
    mask[1, 2] = True
    for form in ("full", "diag", "rowsum"):
        assert _worst(form, "inpaint", mask=mask)[1] < 1e-6, form


TRACES = []


def counting_model(p, x, t):
    TRACES.append(1)
    return GP.model_fn(p, x, t)


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["rowsum", "diag", "full"])
def test_batch_size_invariance_and_one_compile_per_sweep(covariance):
    """Image 0 alone == image 0 in a batch of 3 (float32 rounding) with per-image random masks;
    a sweep over 3 (eta, sigma) pairs is one compiled call equal to separate runs."""
    op = get_operator("inpaint_random", image_shape=SHAPE, mask_prob_range=(0.3, 0.7))
    sample = get_sampler("tmpd")(
        counting_model, SCHED, operator=op, sigma=0.05, covariance=covariance, chunk=5
    )
    keys = jax.random.split(jax.random.key(0), 3)
    op_params = jax.vmap(op.sample)(jax.random.split(jax.random.key(1), 3))
    y = jax.vmap(op.apply)(op_params, 0.3 * jax.random.normal(jax.random.key(2), (3, *SHAPE)))
    params = GP.params()
    three = jax.jit(batched(sample))(params, keys, y, op_params)
    one = jax.jit(sample)(params, keys[0], y[0], jax.tree.map(lambda a: a[0], op_params))
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-5, rtol=1e-5)
    sweep = jax.jit(batched(sample, sweep=True))
    hp = {"eta": jnp.array([1.0, 0.5, 0.0]), "sigma": jnp.array([0.05, 0.1, 0.2])}
    res = sweep(params, keys, y, op_params, hp)
    n_traces = len(TRACES)
    sweep(params, keys, y, op_params, {k: v[::-1] for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    np.testing.assert_allclose(res.x0[0], three.x0, atol=1e-5, rtol=1e-5)
    assert not np.allclose(res.x0[1], res.x0[2], atol=1e-3)


def test_bad_inputs_are_clear_errors():
    op = get_operator("denoise", image_shape=SHAPE)
    make = get_sampler("tmpd")
    with pytest.raises(ValueError, match="tmpd: needs an operator"):
        make(GP.model_fn, SCHED)
    with pytest.raises(ValueError, match="tmpd: needs a linear operator.*phase_retrieval"):
        make(GP.model_fn, SCHED, operator=get_operator("phase_retrieval", image_shape=(8, 8, 1)))
    with pytest.raises(ValueError, match="tmpd: covariance must be one of"):
        make(GP.model_fn, SCHED, operator=op, covariance="kalman")
    with pytest.raises(ValueError, match="tmpd: solver must be one of"):
        make(GP.model_fn, SCHED, operator=op, covariance="full", solver="lu")
    sample = make(GP.model_fn, SCHED, operator=op)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        sample(GP.params(), jax.random.key(0), jnp.zeros(SHAPE), hparams={"scale": 0.1})
    with pytest.raises(ValueError, match="needs the measurement"):
        sample(GP.params(), jax.random.key(0))
