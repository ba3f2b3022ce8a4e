"""DSG: parity with the official code's trajectories, the closed form with a Gaussian prior, the
official sphere radius, batch-size invariance, one compile per sweep and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.errors import ConfigError
from jaxdiff.operators import get_operator
from jaxdiff.samplers import batched, get_sampler
from tests.gaussian_prior import GaussianPrior
from tests.test_dmps import gaussian_problem

SHAPE = (4, 4, 1)
FAST = ["dsg_super_resolution"]
SLOW = ["dsg_gaussian_blur_ddpm"]


def _replay(fixtures_dir, name, **kw):
    from jaxdiff.parity.dsg import replay

    path = fixtures_dir / "dsg" / f"{name}.npz"
    if not path.is_file():
        pytest.fail(f"missing fixture {path}")
    with jax.default_matmul_precision("highest"):
        return replay(path, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_parity(fixtures_dir, name):
    """Every recorded state of the official chain (x_t, x', the unguided mean, x0_hat, the norm
    of the guided steps, the radius's std) per step within the README's rule."""
    r = _replay(fixtures_dir, name)
    bad = {k: v for k, v in r["arrays"].items() if not v.get("pass")}
    assert r["pass"], bad
    assert r["diverged_at"] == [-1] * r["images"]
    for key in ("x_t", "x_pre_guidance", "mean", "x0_hat", "norm", "y_clean"):
        assert key in r["arrays"], key


@pytest.mark.slow
def test_parity_needs_the_first_pixel_radius(fixtures_dir, monkeypatch):
    """The ddpm fixture's last step is guided with the code's radius sqrt(n) sigma_t[0,0,0,0]:
    the default radius (0 there) fails the replay."""
    import jaxdiff.parity.dsg as par
    from jaxdiff.samplers import SAMPLERS

    spec = SAMPLERS.get("dsg")
    real = spec.__call__

    def default_radius(self, *a, **kw):
        kw["official"] = False
        return real(*a, **kw)

    monkeypatch.setattr(type(spec), "__call__", default_radius)
    r = par.replay(fixtures_dir / "dsg" / "dsg_gaussian_blur_ddpm.npz")
    assert not r["arrays"]["x_t"]["pass"]


@pytest.mark.parametrize(
    "op_name, cfg, tol",
    [
        ("denoise", {}, 0.4),
        pytest.param(
            "inpaint", {"mask": np.arange(16).reshape(4, 4) % 5 > 1}, 0.8, marks=pytest.mark.slow
        ),
    ],
)
@pytest.mark.slow
def test_gaussian_prior_posterior_mean(op_name, cfg, tol):
    """A correlated 16-d Gaussian prior (exact eps), the official ddim step over 100 evenly
    spaced steps, eta 1, 1000 samples, no clamp. Rate 0 is DDIM, which samples the prior (mean
    within 0.15 prior std of mu; standard error 0.03). With rate 0.5 DSG's sample mean lies
    within `tol` posterior std of the exact posterior mean on every pixel (measured 0.23
    denoising, 0.63 inpainting; standard error ~0.02), while the prior mean is more than 8
    posterior std away. DSG is approximate: the step has the noise's length whatever the
    residual, so the right rate depends on the dimension (at 16-d: rate 0.2 gives 0.89 / 0.79,
    the 1000-step ddpm form at 0.2 gives 0.23 / 0.64)."""
    _, gp, op, p, y, pm, pc = gaussian_problem(op_name, 0.05, **cfg)
    sched = make_schedule(1000, respacing="100", variance_type="fixed_small")
    ps, prior_std = np.sqrt(np.diag(pc)), np.sqrt(np.diag(gp.cov))
    assert (np.abs(gp.mu - pm) / ps).max() > 8.0
    sample = get_sampler("dsg")(gp.model_fn, sched, operator=op, clip_denoised=False)
    n = 1000
    run = jax.jit(batched(sample, shared_op_params=True, sweep=True))
    hp = {"guidance_scale": jnp.array([0.0, 0.5])}
    keys = jax.random.split(jax.random.key(1), n)
    res = run(gp.params(), keys, jnp.broadcast_to(y, (n, *y.shape)), p, hp)
    assert np.all(np.asarray(res.diverged_at) == -1)
    prior, post = (np.asarray(res.x0[i], np.float64).reshape(n, -1) for i in (0, 1))
    assert (np.abs(prior.mean(0) - gp.mu) / prior_std).max() < 0.15
    err = np.abs(post.mean(0) - pm) / ps
    assert err.max() < tol, err.max()


SCHED = make_schedule(1000, respacing="10", variance_type="fixed_large")
GP = GaussianPrior(SHAPE, SCHED.train_alphas_cumprod)
TRACES = []


def counting_model(p, x, t):
    TRACES.append(1)
    return GP.model_fn(p, x, t)


def _batch():
    op = get_operator("inpaint_random", image_shape=SHAPE, mask_prob_range=(0.3, 0.7))
    keys = jax.random.split(jax.random.key(0), 3)
    op_params = jax.vmap(op.sample)(jax.random.split(jax.random.key(1), 3))
    y = jax.vmap(op.apply)(op_params, 0.3 * jax.random.normal(jax.random.key(2), (3, *SHAPE)))
    return op, keys, op_params, y


@pytest.mark.parametrize("step", ["ddim", "ddpm"])
def test_sphere_radius_and_the_last_step(step):
    """Guided steps land on the sphere of radius ||std|| around the unguided mean; at the last
    step the default adds nothing (x = mean), official=True moves sqrt(n) std[0,0,0] along -g
    with the ddpm step (the ddim std is 0 there, so both agree)."""
    op = get_operator("denoise", image_shape=SHAPE)
    y = 0.3 * jnp.ones(SHAPE)
    out = {}
    for official in (False, True):
        sample = get_sampler("dsg")(
            GP.model_fn, SCHED, operator=op, step=step, official=official, keep_trajectory=True,
            clip_denoised=False, guidance_scale=0.5,
        )  # fmt: skip
        res = jax.jit(sample)(GP.params(), jax.random.key(3), y)
        t = res.trajectory
        moved = np.sqrt(np.sum((np.asarray(t["x"]) - np.asarray(t["mean"])) ** 2, (1, 2, 3)))
        np.testing.assert_allclose(moved, t["radius"], rtol=1e-4, atol=1e-6)
        out[official] = np.asarray(t["radius"])
    np.testing.assert_allclose(out[True][:-1], out[False][:-1], rtol=1e-5)
    assert out[False][-1] == 0
    if step == "ddpm":
        assert out[True][-1] > 0.01
    else:
        assert out[True][-1] == 0


@pytest.mark.slow
def test_batch_size_invariance_and_one_compile_per_sweep():
    """Image 0 alone == image 0 in a batch of 3 (float32 rounding) with per-image random masks;
    a sweep over 3 (rate, interval, eta) settings is one compiled call equal to separate runs."""
    op, keys, op_params, y = _batch()
    sample = get_sampler("dsg")(counting_model, SCHED, operator=op, guidance_scale=0.2)
    params = GP.params()
    three = jax.jit(batched(sample))(params, keys, y, op_params)
    one = jax.jit(sample)(params, keys[0], y[0], jax.tree.map(lambda a: a[0], op_params))
    # the unit direction g / ||g|| amplifies the batch shape's float32 rounding (measured 1.4e-5)
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-4, rtol=0)

    sweep = jax.jit(batched(sample, sweep=True))
    hp = {"guidance_scale": jnp.array([0.2, 0.5, 0.0]), "interval": jnp.array([1.0, 2.0, 1.0]),
          "eta": jnp.array([1.0, 1.0, 0.5])}  # fmt: skip
    res = sweep(params, keys, y, op_params, hp)
    n_traces = len(TRACES)
    sweep(params, keys, y, op_params, {k: v[::-1] for k, v in hp.items()})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    assert res.x0.shape == (3, 3, *SHAPE)
    np.testing.assert_allclose(res.x0[0], three.x0, atol=1e-5, rtol=1e-5)
    interval2 = jax.jit(batched(sample))(params, keys, y, op_params,
                                         {"guidance_scale": 0.5, "interval": 2.0})  # fmt: skip
    np.testing.assert_allclose(res.x0[1], interval2.x0, atol=1e-5, rtol=1e-5)
    assert not np.allclose(res.x0[1], res.x0[2], atol=1e-3)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="dsg: needs an operator"):
        get_sampler("dsg")(GP.model_fn, SCHED)
    op = get_operator("denoise", image_shape=SHAPE)
    with pytest.raises(ValueError, match="dsg: step must be 'ddim' or 'ddpm'"):
        get_sampler("dsg")(GP.model_fn, SCHED, operator=op, step="euler")
    for bad in ({"guidance_scale": -0.1}, {"guidance_scale": 1.5}, {"interval": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            get_sampler("dsg").check_hparams(bad)
    dsg = get_sampler("dsg")(GP.model_fn, SCHED, operator=op)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        dsg(GP.params(), jax.random.key(0), jnp.zeros(SHAPE), hparams={"scale": 0.1})
    with pytest.raises(ValueError, match=r"y has shape \(2, 2, 1\)"):
        dsg(GP.params(), jax.random.key(0), jnp.zeros((2, 2, 1)))
    with pytest.raises(ValueError, match="needs the measurement"):
        dsg(GP.params(), jax.random.key(0), None)


def test_config_presets():
    """configs/dsg.py: Table 3's (interval, rate) per task and step count, the ddpm step at
    1000 steps, the ddim step (eta 1, even respacing) below."""
    from configs import dsg as cfg

    c = cfg.get_config("sr4")
    assert c.method == "dsg" and c.sampler.respacing == "100" and c.sampler.options.step == "ddim"
    assert (c.sampler.hparams.interval, c.sampler.hparams.guidance_scale) == (2.0, 0.1)
    assert c.sampler.hparams.eta == 1.0 and c.sampler.options.clip_denoised
    c = cfg.get_config("random,steps=1000")
    assert c.sampler.options.step == "ddpm" and c.sampler.respacing == "1000"
    assert (c.sampler.hparams.interval, c.sampler.hparams.guidance_scale) == (5.0, 0.2)
    c = cfg.get_config("gaussian_blur,steps=50")
    assert (c.sampler.hparams.interval, c.sampler.hparams.guidance_scale) == (1.0, 0.1)
    with pytest.raises(ValueError, match="steps"):
        cfg.get_config("sr4,steps=30")


def test_chaotic_mode_is_decided_from_the_sidecar(fixtures_dir):
    """The stored files are inside the cap (whole-chain check); a file whose official x0_hat is
    already past half the cap from its float64 value is checked teacher-forced."""
    from jaxdiff.parity.common import chaotic, sidecar
    from jaxdiff.parity.dsg import CHAIN

    for name in FAST + SLOW:
        path = fixtures_dir / "dsg" / f"{name}.npz"
        with np.load(path) as z:
            refs = {n: z[n] for n in CHAIN if n in z.files}
        levels = sidecar(path)["f64_replay"]
        assert chaotic(levels, refs) == [], name
        top = 6e-4 * max(1.0, float(np.abs(refs["x0_hat"]).max()))  # 0.6 of the cap
        raised = {**levels, "max_abs_diff_x0_hat_per_step": [1e-5, top]}
        assert chaotic(raised, refs) == ["x0_hat"], name


def test_clamp_edge_finds_a_reference_pixel_within_its_noise_of_the_clamp():
    """A guided step whose reference x0_hat (from its own input and eps, float64) has a pixel
    within 3x its x0_hat float64 level of +-1 is the one teacher forcing cannot judge."""
    from types import SimpleNamespace

    from jaxdiff.diffusion import make_schedule
    from jaxdiff.parity.dsg import clamp_edge

    sched = make_schedule(1000, respacing="3")
    order = np.arange(3)[::-1]
    abar = sched.alphas_cumprod[order]
    x0 = np.full((3, 1, 2, 2, 1), 5.0)  # every pixel clamped far from the edge
    x0[1, 0, 0, 0, 0] = 0.9999  # step 1: a pixel 1e-4 below the clamp
    eps = np.zeros_like(x0)
    x_in = np.sqrt(abar)[:, None, None, None, None] * x0  # eps 0: x0_hat = x / sqrt(abar)
    fx = SimpleNamespace(arrays={"eps_model": np.moveaxis(eps, -1, 2)})  # NCHW as recorded
    x_T, x_ref = x_in[0], np.concatenate([x_in[1:], x_in[:1]])
    edge = clamp_edge(fx, sched, order, x_T, x_ref, [1e-5, 1e-4, 1e-5])
    assert edge.tolist() == [False, True, False]
    assert not clamp_edge(fx, sched, order, x_T, x_ref, [1e-5, 1e-5, 1e-5]).any()
    assert not clamp_edge(fx, sched, order, x_T, x_ref, None).any()
