"""Training: loss, EMA, optimizer, kill-and-resume, and the shipped demo prior being trained."""

import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import train_demo
from jaxdiff import images, photos, training
from jaxdiff.diffusion import gaussian
from jaxdiff.diffusion.schedule import schedule_from_meta

PRIOR = Path(__file__).parent.parent / "jaxdiff" / "assets" / "demo_prior"


class TinyEps(nn.Module):
    """A stand-in denoiser that compiles in a second: two convs and a timestep feature."""

    @nn.compact
    def __call__(self, x, t, y=None, *, train=False):
        freqs = jnp.array([1e-3, 1e-2, 1e-1])
        emb = nn.Dense(8)(jnp.sin(jnp.asarray(t, jnp.float32)[:, None] * freqs))
        h = nn.Conv(8, (3, 3))(x) + emb[:, None, None, :]
        return nn.Conv(3, (3, 3))(nn.silu(h))


def tiny_setup(lr=3e-2):
    model = TinyEps()
    opt = training.make_optimizer(lr, 2, 100)
    loss_fn = training.make_loss_fn(model, dict(train_demo.DIFFUSION))
    x0 = jnp.asarray(photos.center_crop("rocket", 8))[None].repeat(4, 0)
    state = training.init_state(model, opt, jax.random.key(0), x0[:1])
    return model, opt, loss_fn, x0, state


def test_ema_decay_closed_form():
    np.testing.assert_allclose(training.ema_decay_at(0, 0.99), 0.1)
    np.testing.assert_allclose(training.ema_decay_at(8, 0.99), 0.5)
    np.testing.assert_allclose(training.ema_decay_at(10_000, 0.99), 0.99)


def test_steps_reduce_the_loss_on_a_fixed_batch_and_update_the_ema():
    _, opt, loss_fn, x0, state = tiny_setup()
    step = jax.jit(training.make_train_step(loss_fn, opt, ema_decay=0.99))
    key = jax.random.key(1)
    before = float(loss_fn(state.params, x0, key)[0])
    s1, _ = step(state, x0, key)
    # Step 0 uses decay 1/10: ema = 0.1 * init + 0.9 * new params, leaf by leaf.
    want = jax.tree.map(lambda e, p: 0.1 * e + 0.9 * p, state.ema_params, s1.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s1.ema_params, want)
    s = s1
    for _ in range(20):
        s, metrics = step(s, x0, key)
    assert int(s.step) == 21
    after = float(loss_fn(s.params, x0, key)[0])
    assert after < 0.5 * before, (before, after)


def test_optimizer_rejects_a_warmup_longer_than_training():
    with pytest.raises(ValueError, match="warmup_steps=10"):
        training.make_optimizer(1e-3, 10, 10)


@pytest.mark.slow  # ~50 s: two training runs; resume is also exercised by the driver's kill test
def test_kill_and_restart_resumes_at_the_saved_step_with_identical_state(tmp_path):
    from jaxdiff.training import train

    config = train_demo.get_config("tiny")
    _, full, history = train(config, tmp_path / "a", model=TinyEps(), log=lambda m: None)
    assert int(full.step) == config.train.num_steps == 6
    ckpts = tmp_path / "a" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["4", "6"]
    # "Kill" after the step-4 checkpoint: drop the later one and run the same command again.
    shutil.rmtree(ckpts / "6")
    logs = []
    _, resumed, history2 = train(config, tmp_path / "a", model=TinyEps(), log=logs.append)
    assert any("resumed" in m and "at step 4" in m for m in logs), logs
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert history2["step"] == history["step"] and history2["loss"] == history["loss"]
    assert history2["eval_loss"] == history["eval_loss"]


def test_shipped_prior_is_trained():
    from jaxdiff.models import load_pretrained

    model, params, meta = load_pretrained(PRIOR)
    assert meta["architecture"] == "adm" and meta["diffusion"]["variance_type"] == "fixed_small"
    held = meta["source"]["held_out_photos"]
    assert held == list(images.DEMO_HELD_OUT)
    assert not set(held) & set(meta["source"]["training_photos"])
    size = meta["model_config"]["image_size"]
    x0 = jnp.stack([jnp.asarray(photos.center_crop(n, size, 1.5)) for n in held])
    t = jnp.full((3,), 200)
    eps = jax.random.normal(jax.random.key(0), x0.shape)
    c = training.per_image_tables(schedule_from_meta(meta["diffusion"]), t)
    xt = gaussian.q_sample(c, x0, eps)
    eps_hat = jax.jit(model.apply)({"params": params}, xt, t)
    mse = np.asarray(jnp.mean((eps_hat - eps) ** 2, axis=(1, 2, 3)))
    # Predicting zero scores 1.0; an untrained (zero-initialised) ADM outputs exactly zero.
    assert np.all(mse < 0.5), dict(zip(held, mse))


@pytest.mark.slow  # 10-50 s: kept out of the default run's 10 minutes
def test_shipped_prior_predicts_the_image_mean_colour():
    """At high noise the x0 estimate's mean colour must come from the prior, not from x_t.

    The v0 prior (32 channels: GroupNorm with one channel per group is instance norm) could not
    see a channel's spatial mean, so its x0 estimate's mean colour erred exactly as much as
    x_t / sqrt(abar_t) does (ratio 0.98 at t=800) and its samples drifted to flat saturated
    colours (configs/train_demo.py)."""
    from jaxdiff.models import load_pretrained

    model, params, meta = load_pretrained(PRIOR)
    size = meta["model_config"]["image_size"]
    held = meta["source"]["held_out_photos"]
    x0 = jnp.stack([jnp.asarray(photos.center_crop(n, size, s)) for n in held for s in (1, 2)])
    x0 = jnp.concatenate([x0] * 4)  # 24 images, each with its own noise
    t = jnp.full((x0.shape[0],), 800)
    c = schedule_from_meta(meta["diffusion"]).gather(800, jnp.float32)
    sa, s1 = c["sqrt_alphas_cumprod"], c["sqrt_one_minus_alphas_cumprod"]
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    xt = sa * x0 + s1 * eps
    eps_hat = jax.jit(model.apply)({"params": params}, xt, t)
    dc = lambda x: jnp.mean(x, axis=(1, 2))  # noqa: E731 (per-image mean colour)
    err_model = float(jnp.sqrt(jnp.mean((dc((xt - s1 * eps_hat) / sa) - dc(x0)) ** 2)))
    err_trivial = float(jnp.sqrt(jnp.mean((dc(xt / sa) - dc(x0)) ** 2)))
    assert err_model < 0.6 * err_trivial, (err_model, err_trivial)
