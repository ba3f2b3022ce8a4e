"""PSLD and Latent DPS against the official code (tests/fixtures/psld, LituRout/PSLD run on a tiny
random-weight Stable Diffusion), PSLD's closed form on a Gaussian latent prior, batch-size
invariance, one compile per sweep, clear errors and the config presets."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.operators import get_noise, get_operator
from jaxdiff.parity import psld as par
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers import psld as psld_module
from jaxdiff.samplers.latent_common import linear_latent
from tests.test_latent_dps import IS, SIGMA, problem

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "psld"
FILES = sorted(p.name for p in FIXTURES.glob("*.npz"))
FAST = "psld_super_resolution.npz"  # one replay (~1 min of compiling) in the default run


@pytest.mark.parametrize(
    "name", [n if n == FAST else pytest.param(n, marks=pytest.mark.slow) for n in FILES]
)
@pytest.mark.slow
def test_parity(name):
    """Every recorded state (z_t, eps, z0_hat, the decoded x0_hat, the glued image and its
    encoding, the sample) within the README's rule; nothing left uncompared without a reason."""
    r = par.replay(FIXTURES / name)
    bad = {k: v for k, v in r["arrays"].items() if not v["pass"]}
    assert r["pass"] and not bad, bad
    for state in ("z_t", "z0_hat", "e_t", "x0_hat", "sample"):
        assert state in r["arrays"], state
    if name.startswith("psld_"):
        assert {"glued", "z_glued", "glue_norm"} <= set(r["arrays"])
    assert set(r["not_compared"]) <= {"noise_enc", "glued", "z_glued", "glue_norm"}


def test_ddim_grid_comes_from_the_requested_steps():
    """CompVis's range(0, 1000, 1000 // S) + 1 has more than S entries when S does not divide
    1000; the replay builds the grid from the sidecar's requested S, not the recorded count."""
    abar = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    for s, want in ((7, range(0, 1000, 142)), (12, range(0, 1000, 83)), (10, range(0, 1000, 100))):
        sched = make_schedule(alphas_cumprod=abar, respacing=f"ldm{s}", convention="diffusers")
        np.testing.assert_array_equal(sched.timestep_map, np.asarray(want) + 1)
    for name in FILES:
        side = json.loads((FIXTURES / name).with_suffix(".json").read_text())
        s = side["sampler"]["ddim_steps"]
        got = np.load(FIXTURES / name)["ddim_timesteps"]
        np.testing.assert_array_equal(got, np.arange(0, 1000, 1000 // s) + 1)


@pytest.mark.slow
def test_parity_needs_the_official_transpose(monkeypatch):
    """The SR fixture tells PSLD's transpose (nearest upsampling) from the true adjoint."""
    monkeypatch.setattr(psld_module, "official_transpose", lambda op: op.adjoint)
    r = par.replay(FIXTURES / FAST)
    assert not r["arrays"]["glued"]["pass"] and not r["arrays"]["z_t"]["pass"]


@pytest.mark.slow
def test_gaussian_latent_closed_form():
    """Linear decoder + Gaussian latent prior (tests/test_latent_dps.problem): 1000 samples,
    ldm100, eta 1. The gluing term alone (omega 0, gamma 0.5) moves the sample mean from the
    prior mean (28 posterior std away) to within 1.6 posterior std of the exact posterior mean
    (measured 1.33); with omega 0.3, gamma 0.3 it is within 0.85 (measured 0.69; standard
    error 0.03). For inpainting A^T = A^+, so the default gluing equals gluing="pinv"."""
    sched, gp, m, fns, op, p, a, y = problem()
    pm, pc = gp.linear_posterior(a @ m, y, SIGMA)
    xm, xs = m @ pm, np.sqrt(np.diag(m @ pc @ m.T))
    noise = get_noise("gaussian", sigma=SIGMA)
    n = 1000
    hp = {"omega": jnp.array([0.0, 0.3]), "gamma": jnp.array([0.5, 0.3]), "eta": jnp.ones(2)}
    yb = jnp.broadcast_to(jnp.asarray(y).reshape(IS), (n, *IS))
    keys = jax.random.split(jax.random.key(1), n)
    errs = []
    for gluing in ("adjoint", "pinv"):
        sample = get_sampler("psld")(
            gp.model_fn, sched, operator=op, noise=noise, latent=fns, gluing=gluing
        )
        res = jax.jit(batched(sample, shared_op_params=True, sweep=True))(
            gp.params(), keys, yb, p, hp
        )
        assert np.all(np.asarray(res.diverged_at) == -1)
        x = np.asarray(res.x0, np.float64).reshape(2, n, -1)
        errs.append([(np.abs(x[i].mean(0) - xm) / xs).max() for i in range(2)])
    assert errs[0][0] < 1.6 and errs[0][1] < 0.85, errs
    np.testing.assert_allclose(errs[0], errs[1], rtol=1e-3)


TRACES = []


def counting_model(params, z, t):
    TRACES.append(1)
    return problem()[1].model_fn(params, z, t)


@pytest.mark.slow
def test_batch_size_invariance_and_one_compile_per_sweep():
    sched, gp, m, fns, op, p, a, y = problem()
    sched = make_schedule(1000, respacing="ldm10")
    noise = get_noise("gaussian", sigma=SIGMA)
    sample = get_sampler("psld")(counting_model, sched, operator=op, noise=noise, latent=fns)
    params = gp.params()
    keys = jax.random.split(jax.random.key(0), 3)
    ys = jnp.stack([jnp.asarray(y).reshape(IS) * s for s in (1.0, 0.5, -1.0)])
    three = jax.jit(batched(sample, shared_op_params=True))(params, keys, ys, p)
    one = jax.jit(sample)(params, keys[1], ys[1], p)
    np.testing.assert_allclose(three.x0[1], one.x0, atol=1e-5, rtol=1e-5)
    sweep = jax.jit(batched(sample, sweep=True, shared_op_params=True))
    hp = {"omega": jnp.array([1.0, 0.2, 0.0]), "gamma": jnp.array([0.1, 0.5, 0.0]),
          "eta": jnp.array([0.0, 1.0, 0.5])}  # fmt: skip
    res = sweep(params, keys, ys, p, hp)
    n_traces = len(TRACES)
    sweep(params, keys, ys, p, {k: v[::-1] for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    np.testing.assert_allclose(res.x0[0], three.x0, atol=1e-5, rtol=1e-5)
    assert not np.allclose(res.x0[1], res.x0[2], atol=1e-3)


def test_bad_inputs_are_clear_errors():
    sched, gp, m, fns, op, p, a, y = problem()
    make = get_sampler("psld")
    with pytest.raises(ValueError, match="psld: needs a linear operator"):
        pr = get_operator("phase_retrieval", image_shape=IS)
        make(gp.model_fn, sched, operator=pr, latent=fns)
    with pytest.raises(ValueError, match="psld: a latent-space method needs a latent prior"):
        make(gp.model_fn, sched, operator=op)
    with pytest.raises(ValueError, match="gluing must be one of"):
        make(gp.model_fn, sched, operator=op, latent=fns, gluing="transpose")
    with pytest.raises(ValueError, match="no transpose for operator 'colorize'"):
        col = get_operator("colorize", image_shape=(4, 4, 3))
        rgb = linear_latent(np.ones((48, 16)), (4, 4, 1), (4, 4, 3))
        make(gp.model_fn, sched, operator=col, latent=rgb, official=True)
    with pytest.raises(ValueError, match=r"y has shape \(2, 2, 1\)"):
        make(gp.model_fn, sched, operator=op, latent=fns)(
            gp.params(), jax.random.key(0), jnp.zeros((2, 2, 1)), p
        )


def test_official_transposes():
    """PSLD's measurements.py transposes: nearest upsampling for SR, identity elsewhere."""
    sr = get_operator("super_resolution", image_shape=(8, 8, 3), factor=4)
    y = jnp.arange(12.0).reshape(2, 2, 3)
    up = psld_module.official_transpose(sr)({}, y)
    np.testing.assert_array_equal(up[:4, :4], jnp.broadcast_to(y[0, 0], (4, 4, 3)))
    blur = get_operator("gaussian_blur", image_shape=(8, 8, 3), kernel_size=3, std=1.0)
    np.testing.assert_array_equal(psld_module.official_transpose(blur)({}, up), up)


def test_config_presets():
    from jaxdiff import config_lib

    cfg = config_lib.config_module("psld")
    sd = cfg.get_config("sr4")
    assert sd.method == "psld" and sd.sampler.respacing == "ldm1000"
    assert (sd.sampler.hparams.omega, sd.sampler.hparams.gamma) == (1.0, 0.1)
    assert sd.task.reference_size == 512 and sd.task.operator_config.factor == 4
    assert cfg.get_config("sr4,factor=8").task.operator_config.factor == 8
    box = cfg.get_config("box")
    assert (box.sampler.hparams.omega, box.sampler.hparams.gamma) == (0.1, 0.01)
    assert tuple(box.task.operator_config.mask_len_range) == (256, 257)
    ldm = cfg.get_config("sr4,prior=ldm")
    assert (ldm.sampler.hparams.omega, ldm.sampler.hparams.gamma) == (0.9, 0.1)
    assert ldm.task.reference_size == 256
    blur = cfg.get_config("gaussian_blur")
    assert blur.task.operator_config.kernel_size == 121 and blur.task.operator_config.std == 3.0
    assert cfg.get_config("motion_blur").task.operator_config.intensity == 0.5
    with pytest.raises(ValueError, match="phase_retrieval"):
        cfg.get_config("phase_retrieval")
    ldps = config_lib.config_module("latent_dps")
    c = ldps.get_config("random")
    assert c.method == "latent_dps" and c.sampler.hparams.scale == 1.0
    assert ldps.get_config("box,prior=ldm").sampler.hparams.scale == 0.1
