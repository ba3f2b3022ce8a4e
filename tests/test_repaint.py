"""RePaint: parity with the official code's trajectories, the walk against the official grid, the
closed form with a Gaussian prior, batch-size invariance, one compile for new masks, and clear
errors for the operators it cannot take."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.diffusion.time_grids import TIME_GRIDS, repaint_walk
from jaxdiff.operators import get_operator
from jaxdiff.samplers import batched, get_sampler
from tests.gaussian_prior import GaussianPrior

SHAPE = (4, 4, 1)
MASK = np.arange(16).reshape(4, 4) % 5 > 1  # 1 = known: 9 known, 7 missing pixels
FAST = ["repaint_box_b2"]
SLOW = ["repaint_random_nsample2"]


def _replay(fixtures_dir, name, **kw):
    """As `python -m jaxdiff.parity` judges it (jaxdiff.parity.own_level), or the replay itself
    with other arguments."""
    from jaxdiff.parity import own_level, repaint

    path = fixtures_dir / "repaint" / f"{name}.npz"
    if not path.is_file():
        pytest.fail(f"missing fixture {path}")
    with jax.default_matmul_precision("highest"):
        return repaint.replay(path, **kw) if kw else own_level.replay(repaint, path)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_parity(fixtures_dir, name):
    """Every recorded state of the official walk (x_t after each pair, the blended model input
    x_in, x0_hat) within the README's rule (3x the reference's float32-vs-float64 level)."""
    r = _replay(fixtures_dir, name)
    bad = {k: v for k, v in r["arrays"].items() if not v.get("pass")}
    assert r["pass"], bad
    assert r["diverged_at"] == [-1] * r["images"]
    assert r["pairs"] > r["model_steps"]  # the walk went back up
    for array in ("x_t", "x_in", "x0_hat", "sample", "times", "model_timestep"):
        assert array in r["arrays"], array


def _paper_schedule(t_T, jump_length, jump_n_sample):
    # andreas128/RePaint guided_diffusion/scheduler.py get_schedule_jump_paper, written out
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


def test_walk_is_the_official_schedule():
    assert TIME_GRIDS.get("repaint").kind == "walk"
    # the official confs (t_T 250, jump_length 10, jump_n_sample 10) are the paper's schedule
    walk = repaint_walk(250, 1, 10, 10)
    assert walk == _paper_schedule(250, 10, 10)
    assert len(walk) - 1 == 250 + 2 * 10 * 9 * 24
    assert get_sampler("repaint").num_evaluations(250, {}) == 250 + 10 * 9 * 24
    # n_sample 2: one step back up and down again after each step to t with t + 1 < t_T - 1
    # (hand-unrolled)
    assert repaint_walk(4, n_sample=2, jump_length=1, jump_n_sample=1) == [
        3, 2, 1, 2, 1, 0, 1, 0, -1,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="positive integer"):
        repaint_walk(10, jump_length=0)


def _conditional(gp, y):
    """The exact mean and std of the missing pixels given the known ones (noiseless)."""
    m, u = MASK.reshape(-1), ~MASK.reshape(-1)
    c, mu = gp.cov, gp.mu
    y = np.asarray(y, np.float64).reshape(-1)
    gain = c[np.ix_(u, m)] @ np.linalg.inv(c[np.ix_(m, m)])
    mean = mu[u] + gain @ (y[m] - mu[m])
    cov = c[np.ix_(u, u)] - gain @ c[np.ix_(m, u)]
    return mean, np.sqrt(np.diag(cov))


def _run(sched, gp, y, op, n, **options):
    sample = get_sampler("repaint")(gp.model_fn, sched, operator=op, clip_denoised=False, **options)
    keys = jax.random.split(jax.random.key(1), n)
    res = jax.jit(batched(sample, shared_op_params=True))(
        gp.params(), keys, jnp.broadcast_to(y, (n, *SHAPE)), op.sample(None)
    )
    assert np.all(np.asarray(res.diverged_at) == -1)
    return np.asarray(res.x0, np.float64).reshape(n, -1)


@pytest.mark.slow
def test_gaussian_prior_known_pixels_and_conditional_mean():
    """A correlated 16-d Gaussian prior (exact eps), a fixed mask (9 of 16 pixels known, noiseless),
    the known pixels 1.5 prior std above the mean. The default ends with the measurement pasted:
    known pixels equal y exactly. At the official walk (250 steps, jumps of 10, 10 times) the
    sample mean of the missing pixels lies within 0.3 conditional std of the exact conditional
    mean (measured 0.20; standard error 0.03, 1000 samples), while the prior mean is 1.55 std
    away and the plain blend without resampling (50 steps, jump_n_sample 1) is 0.81 std off:
    the resampling is what harmonises the two regions. official=True returns the last model
    output, whose known pixels are near y (measured 0.039) but not equal."""
    sched = make_schedule(1000, respacing="250", variance_type="fixed_small")
    gp = GaussianPrior(SHAPE, sched.train_alphas_cumprod)
    op = get_operator("inpaint", image_shape=SHAPE, mask=MASK)
    x = gp.mu + 1.5 * np.sqrt(np.diag(gp.cov))
    y = op.apply(op.sample(None), jnp.asarray(x.reshape(SHAPE), jnp.float32))
    mean, std = _conditional(gp, y)
    m, u = MASK.reshape(-1), ~MASK.reshape(-1)
    assert (np.abs(gp.mu[u] - mean) / std).max() > 1.4

    n = 1000
    out = _run(sched, gp, y, op, n, jump_length=10, jump_n_sample=10)
    np.testing.assert_array_equal(out[:, m], np.broadcast_to(np.asarray(y).reshape(-1)[m], (n, 9)))
    err = np.abs(out[:, u].mean(0) - mean) / std
    assert err.max() < 0.3, err.max()

    sched50 = make_schedule(1000, respacing="50", variance_type="fixed_small")
    plain = _run(sched50, gp, y, op, n, jump_length=1, jump_n_sample=1, official=True)
    assert (np.abs(plain[:, u].mean(0) - mean) / std).max() > 0.5
    known_err = np.abs(plain[:, m] - np.asarray(y).reshape(-1)[m])
    assert 0 < known_err.max() < 0.1


TRACES = []
SCHED = make_schedule(1000, respacing="10", variance_type="fixed_small")
GP = GaussianPrior(SHAPE, SCHED.train_alphas_cumprod)


def counting_model(p, x, t):
    TRACES.append(1)
    return GP.model_fn(p, x, t)


def _batch(seed):
    op = get_operator("inpaint_random", image_shape=SHAPE, mask_prob_range=(0.3, 0.7))
    keys = jax.random.split(jax.random.key(seed), 3)
    op_params = jax.vmap(op.sample)(jax.random.split(jax.random.key(seed + 1), 3))
    x = 0.3 * jax.random.normal(jax.random.key(seed + 2), (3, *SHAPE))
    return op, keys, op_params, jax.vmap(op.apply)(op_params, x)


@pytest.mark.slow
def test_batch_size_invariance_and_one_compile():
    """Image 0 alone == image 0 in a batch of 3 with per-image random masks; new masks and
    measurements reuse the compiled walk (masks are traced op_params). RePaint has no traced
    hyperparameter to sweep: its walk's integers set the scan length."""
    op, keys, op_params, y = _batch(0)
    spec = get_sampler("repaint")
    assert spec.hparams == {} and spec.needs >= {"mask", "measurement"}
    sample = spec(counting_model, SCHED, operator=op, jump_length=3, jump_n_sample=2)
    run = jax.jit(batched(sample))
    three = run(GP.params(), keys, y, op_params)
    one = jax.jit(sample)(GP.params(), keys[0], y[0], jax.tree.map(lambda a: a[0], op_params))
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-6, rtol=1e-6)
    n_traces = len(TRACES)
    _, keys2, op_params2, y2 = _batch(10)
    other = run(GP.params(), keys2, y2, op_params2)
    assert run._cache_size() == 1 and len(TRACES) == n_traces
    assert not np.allclose(other.x0, three.x0)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        sample(GP.params(), keys[0], y[0], op.sample(keys[0]), hparams={"eta": 0.5})


@pytest.mark.parametrize(
    "op_name, cfg",
    [
        ("gaussian_blur", {"kernel_size": 3}),
        ("super_resolution", {"factor": 2}),
        ("denoise", {}),
        ("colorize", {}),
        ("phase_retrieval", {}),
    ],
)
def test_operators_other_than_masks_are_refused(op_name, cfg):
    shape = (8, 8, 3)
    sched = make_schedule(1000, respacing="10")
    op = get_operator(op_name, image_shape=shape, **cfg)
    with pytest.raises(ValueError, match=f"repaint: needs .*{op_name}"):
        get_sampler("repaint")(GP.model_fn, sched, operator=op)


def test_bad_inputs_are_clear_errors():
    op = get_operator("inpaint", image_shape=SHAPE, mask=MASK)
    with pytest.raises(ValueError, match="repaint: needs an operator"):
        get_sampler("repaint")(GP.model_fn, SCHED)
    with pytest.raises(ValueError, match=r"t_T=11 must be in \[1, 10\]"):
        get_sampler("repaint")(GP.model_fn, SCHED, operator=op, t_T=11)
    with pytest.raises(ValueError, match="unknown walk option"):
        get_sampler("repaint")(GP.model_fn, SCHED, operator=op, jump_lenght=3)
    sample = get_sampler("repaint")(GP.model_fn, SCHED, operator=op)
    with pytest.raises(ValueError, match=r"y has shape \(2, 2, 1\)"):
        sample(GP.params(), jax.random.key(0), jnp.zeros((2, 2, 1)), op.sample(None))
    with pytest.raises(ValueError, match="needs the measurement"):
        sample(GP.params(), jax.random.key(0), None, op.sample(None))


def test_config_presets():
    """configs/repaint.py: the official walk and respacing on the mask tasks, the others
    refused by name."""
    from configs import repaint as cfg

    for task in ("box", "random"):
        c = cfg.get_config(task)
        assert c.method == "repaint" and c.sampler.respacing == "250"
        o = c.sampler.options
        assert (o.jump_length, o.jump_n_sample, o.n_sample) == (10, 10, 1)
        assert o.clip_denoised and not o.official
    for task in ("gaussian_blur", "sr4", "phase_retrieval"):
        with pytest.raises(ValueError, match=task):
            cfg.get_config(task)
