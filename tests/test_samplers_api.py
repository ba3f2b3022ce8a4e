"""Sampler mechanics: batch-size invariance, the batch-coupled DPS norm, one compile per sweep,
the NaN guard, snapshots / trajectory / progress, and clear errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.errors import DivergenceError
from jaxdiff.samplers import SAMPLERS, batched, get_sampler, loop, raise_on_divergence
from jaxdiff.samplers.base import NEEDS
from tests.gaussian_prior import GaussianPrior

SHAPE = (4, 4, 1)
SCHED = make_schedule(1000, respacing="10", variance_type="learned_range")
GP = GaussianPrior(SHAPE, SCHED.train_alphas_cumprod)
PARAMS = GP.params(v=0.1)


def blur(x):
    k = jnp.outer(jnp.array([0.25, 0.5, 0.25]), jnp.array([0.25, 0.5, 0.25]))
    return jax.scipy.signal.convolve2d(x[..., 0], k, mode="same")[..., None]


def measurements(n, seed=1):
    return 0.3 * jax.random.normal(jax.random.key(seed), (n, *SHAPE))


def test_registry_entries_declare_what_they_need_and_cost():
    assert {"ddpm", "dps", "score_ald", "sdedit", "tweedie"} <= set(SAMPLERS.names())
    with pytest.raises(KeyError, match="unknown sampler 'nope'"):
        get_sampler("nope")
    for name in SAMPLERS.names():
        spec = get_sampler(name)
        assert spec.needs <= NEEDS, name
        assert spec.num_evaluations(10) >= 1, name
        assert set(spec.bounds) <= set(spec.hparams), name
    assert get_sampler("dps").grad and not get_sampler("score_ald").grad
    assert get_sampler("tweedie").num_evaluations(1000) == 1
    assert get_sampler("sdedit").num_evaluations(100, {"max_t0": 0.3, "repeats": 2}) == 60
    assert "guide" in get_sampler("sdedit").needs and "sigma" in get_sampler("tweedie").hparams


def test_declared_needs_are_checked_against_the_operator():
    from jaxdiff.operators import get_operator

    pr = get_operator("phase_retrieval", image_shape=SHAPE)
    for name in SAMPLERS.names():
        spec = get_sampler(name)
        if "linear" in spec.needs:
            with pytest.raises(ValueError, match=f"{name}: needs a linear operator"):
                spec(GP.model_fn, SCHED, operator=pr, image_shape=SHAPE)
        elif "svd" in spec.needs:
            with pytest.raises(ValueError, match=f"{name}: needs an operator in SVD form"):
                spec(GP.model_fn, SCHED, operator=pr, image_shape=SHAPE)
        if "operator" in spec.needs:
            with pytest.raises(ValueError, match=f"{name}: needs an operator"):
                spec(GP.model_fn, SCHED, image_shape=SHAPE)


def test_model_image_size_is_checked_against_the_operator():
    """The README's DPS example with a 256 px operator and a 32 px prior used to sample at 256."""
    import json
    import pathlib

    import jaxdiff
    from jaxdiff.models import build_model, model_fn
    from jaxdiff.operators import get_operator

    sidecar = pathlib.Path(jaxdiff.__file__).parent / "assets" / "demo_prior" / "jaxdiff.json"
    cfg = json.loads(sidecar.read_text())["model_config"]
    size = int(cfg["image_size"])
    fn = model_fn(build_model("adm", cfg))
    assert fn.image_size == size
    op = get_operator("inpaint_box", image_shape=(256, 256, 3))
    with pytest.raises(ValueError, match=f"built for {size}x{size} images, but operator"):
        get_sampler("dps")(fn, SCHED, operator=op)
    with pytest.raises(ValueError, match=f"built for {size}x{size} images, but image_shape"):
        get_sampler("ddpm")(fn, SCHED, image_shape=(64, 64, 3))
    get_sampler("ddpm")(fn, SCHED, image_shape=(size, size, 3))  # the right size builds


TRACES = []


def counting_model(p, x, t):
    TRACES.append(1)
    return GP.model_fn(p, x, t)


DPS = get_sampler("dps")(counting_model, SCHED, operator=blur, image_shape=SHAPE, scale=0.5)
DPS_REMAT = get_sampler("dps")(GP.model_fn, SCHED, operator=blur, image_shape=SHAPE, remat=True)


def test_dps_batch_size_invariance_one_compile_sweep_and_remat():
    """Per-sample norm: image 0 alone == image 0 in a batch of 3, up to float32 rounding
    (<= 1e-6; XLA may pick another kernel for a batched matmul of another batch size). A sweep
    over 3 scales is ONE compiled call (traced once, one cache entry across two calls), and its
    entries equal separate runs; the sweep runs the rematerialised (jax.checkpoint) UNet, which
    must not change values."""
    keys, y = jax.random.split(jax.random.key(0), 3), measurements(3)
    three = jax.jit(batched(DPS))(PARAMS, keys, y)
    one = jax.jit(DPS)(PARAMS, keys[0], y[0])
    np.testing.assert_allclose(three.x0[0], one.x0, atol=1e-6, rtol=0)
    assert not np.allclose(three.x0[1], one.x0, atol=1e-2)

    sweep = jax.jit(batched(DPS_REMAT, sweep=True))
    res = sweep(PARAMS, keys, y, None, {"scale": jnp.array([0.0, 0.5, 1.0])})
    n_traces = len(TRACES)
    sweep(PARAMS, keys, y, None, {"scale": jnp.array([0.1, 0.2, 0.4])})
    assert sweep._cache_size() == 1 and len(TRACES) == n_traces
    assert res.x0.shape == (3, 3, *SHAPE)
    np.testing.assert_allclose(res.x0[1], three.x0, atol=1e-6)
    assert not np.allclose(res.x0[0], res.x0[2], atol=1e-3)


def reference_dps(params, x_T, noise, y, scale):
    """The official DPS loop on a whole batch: one Frobenius norm over the batch tensor,
    differentiated w.r.t. the batch of x_t (written directly: no vmap, no psum)."""
    from jaxdiff.diffusion import gaussian

    def step(x, inputs):
        k, z = inputs
        c = SCHED.gather(k, jnp.float32)

        def norm_fn(xb):
            out = GP.model_fn(params, xb, jnp.full((xb.shape[0],), c["timestep"]))
            x0 = jnp.clip(gaussian.x0_from_eps(c, xb, out[..., :1]), -1, 1)
            r = y - jax.vmap(blur)(x0)
            return jnp.sqrt(jnp.sum(r * r)), (x0, out[..., 1:])

        (_, (x0, v)), g = jax.value_and_grad(norm_fn, has_aux=True)(x)
        mean = gaussian.posterior_mean(c, x0, x)
        lv = gaussian.log_variance("learned_range", c, v)
        return mean + jnp.where(k > 0, jnp.exp(0.5 * lv) * z, 0) - scale * g, None

    ks = jnp.arange(SCHED.num_steps - 1, -1, -1)
    return jax.lax.scan(step, x_T, (ks, jnp.swapaxes(noise, 0, 1)))[0]


def test_batch_coupled_norm_matches_the_official_whole_batch_norm():
    keys = jax.random.split(jax.random.key(2), 3)
    y = measurements(3, seed=4)
    x_T = jax.random.normal(jax.random.key(5), (3, *SHAPE))
    noise = jax.random.normal(jax.random.key(6), (3, SCHED.num_steps, *SHAPE))
    coupled = get_sampler("dps")(
        GP.model_fn, SCHED, operator=blur, image_shape=SHAPE, scale=0.5, batch_coupled_norm=True
    )
    got = jax.jit(batched(coupled))(PARAMS, keys, y, None, None, {"x_T": x_T, "noise": noise})
    want = jax.jit(reference_dps)(PARAMS, x_T, noise, y, 0.5)
    np.testing.assert_allclose(got.x0, want, atol=2e-5)
    with pytest.raises(ValueError, match="batch_coupled_norm=True needs"):
        jax.eval_shape(coupled, PARAMS, keys[0], y[0])


DDPM = jax.jit(
    batched(
        get_sampler("ddpm")(
            GP.model_fn,
            SCHED,
            image_shape=SHAPE,
            keep_trajectory=True,
            snapshot_every=3,
            progress_every=4,
        )
    )
)


def test_nan_guard_freezes_the_image_and_reports_the_step():
    keys = jax.random.split(jax.random.key(0), 2)
    x_T = jax.random.normal(jax.random.key(1), (2, *SHAPE))
    noise = jax.random.normal(jax.random.key(2), (2, SCHED.num_steps, *SHAPE))
    clean = DDPM(PARAMS, keys, None, None, None, {"x_T": x_T, "noise": noise})
    bad = DDPM(PARAMS, keys, None, None, None, {"x_T": x_T, "noise": noise.at[1, 3].set(jnp.nan)})
    assert raise_on_divergence(clean) is clean
    np.testing.assert_array_equal(bad.diverged_at, [-1, 3])
    np.testing.assert_array_equal(bad.x0[0], clean.x0[0])
    # frozen at the last finite value: x after step 2
    np.testing.assert_array_equal(bad.x0[1], clean.trajectory["x"][1, 2])
    with pytest.raises(DivergenceError, match=r"image 1 at step 3 \(t=666\)") as info:
        raise_on_divergence(bad, SCHED.timestep_map)
    assert info.value.images == [(1,)] and info.value.steps == [3]
    np.testing.assert_array_equal(info.value.result.x0[0], clean.x0[0])


def test_snapshots_trajectory_progress_and_keys(monkeypatch):
    ticks = []
    monkeypatch.setattr(loop._Ticker, "__call__", lambda self, i: ticks.append(int(i)))
    keys = jax.random.split(jax.random.key(0), 2)
    res = DDPM(PARAMS, keys)
    jax.effects_barrier()
    assert res.snapshots.shape == (2, 4, *SHAPE)
    np.testing.assert_array_equal(res.snapshots, res.trajectory["x"][:, [2, 5, 8, 9]])
    np.testing.assert_array_equal(res.trajectory["x"][:, -1], res.x0)
    assert sorted(ticks) == [0, 4, 8, 9]  # once per tick for the whole batch, not per image
    # a result depends on its own key only: same key, same sample; another key, another one
    np.testing.assert_array_equal(DDPM(PARAMS, keys[::-1]).x0[::-1], res.x0)
    assert not np.allclose(res.x0[0], res.x0[1])


def test_bad_inputs_are_clear_errors():
    three_channel = make_schedule(1000, respacing="10", variance_type="learned_range")
    params = GP.params()  # no "v": the model outputs eps only (1 channel here)
    ddpm = get_sampler("ddpm")(GP.model_fn, three_channel, image_shape=SHAPE)
    with pytest.raises(ValueError, match="outputs 1 channels but variance_type 'learned_range'"):
        jax.eval_shape(ddpm, params, jax.random.key(0))
    dps = get_sampler("dps")(GP.model_fn, SCHED, operator=blur, image_shape=SHAPE)
    with pytest.raises(ValueError, match=r"maps an image \(4, 4, 1\) to \(4, 4, 1\), but the meas"):
        jax.eval_shape(dps, PARAMS, jax.random.key(0), jnp.zeros((2, 2, 1)))
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        jax.eval_shape(dps, PARAMS, jax.random.key(0), jnp.zeros(SHAPE), None, {"zeta": 1.0})
    with pytest.raises(ValueError, match="replayed noise has shape"):
        jax.eval_shape(ddpm, PARAMS, jax.random.key(0), None, None, None, {"noise": jnp.zeros(3)})
    with pytest.raises(ValueError, match="needs an operator"):
        get_sampler("dps")(GP.model_fn, SCHED, image_shape=SHAPE)
    with pytest.raises(ValueError, match="pass image_shape"):
        get_sampler("ddpm")(GP.model_fn, SCHED)
    with pytest.raises(ValueError, match="sweep=True"):
        batched(dps, sweep=True)(
            PARAMS, jax.random.split(jax.random.key(0), 2), jnp.zeros((2, *SHAPE))
        )
    with pytest.raises(ValueError, match="gamma must be"):
        get_sampler("score_ald")(GP.model_fn, SCHED, operator=blur, image_shape=SHAPE, gamma="x")
    tweedie = get_sampler("tweedie")(GP.model_fn, SCHED, image_shape=SHAPE)
    with pytest.raises(ValueError, match="give sigma or t"):
        jax.eval_shape(tweedie, PARAMS, jax.random.key(0), jnp.zeros(SHAPE))
    with pytest.raises(ValueError, match="cannot make a guide image"):
        jax.eval_shape(tweedie, PARAMS, jax.random.key(0), jnp.zeros((3, 3, 2)), None, {"t": 3})


def test_clip_gradient_is_inclusive_like_torch_clamp():
    from jaxdiff.samplers.common import clip_inclusive

    x = jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(clip_inclusive(x), [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(jax.grad(lambda v: clip_inclusive(v).sum())(x), [0, 1, 1, 1, 0])


def test_docs_list_every_registered_sampler():
    """docs/methods.md is where a method's update and sources are written down."""
    import pathlib

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "methods.md").read_text()
    missing = [n for n in SAMPLERS.names() if f"| `{n}` |" not in doc]
    assert not missing, f"docs/methods.md has no row for {missing}"


def test_model_fn_traces_the_network_once_for_every_program():
    import flax.linen as nn

    from jaxdiff.models import model_fn

    traces = []

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, t):
            traces.append(x.shape)
            return nn.Dense(x.shape[-1])(x) * (1.0 + t[:, None, None, None])

    net = Net()
    x, t = jnp.ones((2, 3, 3, 2)), jnp.array([0.1, 0.2])
    params = net.init(jax.random.key(0), x, t)["params"]
    traces.clear()
    fn = model_fn(net)
    assert model_fn(net) is fn  # one per module
    sample = jax.jit(lambda p, x: fn(p, x, t) * 2)(params, x)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(fn(params, x, t) ** 2)))(x)
    batch = jax.jit(jax.vmap(lambda x, t: fn(params, x[None], t[None])[0]))(x, t)
    assert len(traces) <= 2  # the forward, plus once for vmap's batched shape (not per program)
    want = net.apply({"params": params}, x, t)
    np.testing.assert_allclose(sample, 2 * want, rtol=1e-6)
    np.testing.assert_allclose(batch, want, rtol=1e-6, atol=1e-7)
    assert grad.shape == x.shape
