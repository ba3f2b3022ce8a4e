"""Batches over 8 emulated CPU devices (tests/conftest.py): same results as on one device,
padding for batches that do not divide the device count, sweeps sharded either way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.samplers import get_sampler
from jaxdiff.sharding import ShardedBatch, ShardedSampler, batch_mesh, pad_batch, process_share
from tests.gaussian_prior import GaussianPrior

SHAPE = (4, 4, 1)
SCHED = make_schedule(1000, respacing="10", variance_type="learned_range")
GP = GaussianPrior(SHAPE, SCHED.train_alphas_cumprod)
PARAMS = GP.params(v=0.1)


def blur(x):
    k = jnp.outer(jnp.array([0.25, 0.5, 0.25]), jnp.array([0.25, 0.5, 0.25]))
    return jax.scipy.signal.convolve2d(x[..., 0], k, mode="same")[..., None]


def test_eight_devices_are_emulated():
    assert jax.device_count() == 8


def test_one_vs_eight_devices_with_padding_and_coupled_norm():
    """5 images (padded to 8 on 8 devices, to 5 on 1; padding dropped), batch-coupled DPS so the
    padding must stay out of the norm: 8 devices == 1 device. Equal to float32 rounding
    (<= 1e-6): per-device batch sizes differ, so XLA may pick other kernels."""
    sample = get_sampler("dps")(
        GP.model_fn, SCHED, operator=blur, image_shape=SHAPE, scale=0.5, batch_coupled_norm=True
    )
    keys = jax.random.split(jax.random.key(0), 5)
    y = 0.3 * jax.random.normal(jax.random.key(1), (5, *SHAPE))
    eight = ShardedSampler(sample)
    one = ShardedSampler(sample, mesh=batch_mesh(jax.devices()[:1]))
    assert eight.num_devices == 8 and one.num_devices == 1
    r8, r1 = eight(PARAMS, keys, y), one(PARAMS, keys, y)
    assert r8.x0.shape == (5, *SHAPE) and r8.diverged_at.shape == (5,)
    assert len(r8.x0.sharding.device_set) == 8
    np.testing.assert_allclose(r8.x0, r1.x0, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_sweep_sharded_over_values_or_images():
    sample = get_sampler("dps")(GP.model_fn, SCHED, operator=blur, image_shape=SHAPE)
    keys = jax.random.split(jax.random.key(0), 3)
    y = 0.3 * jax.random.normal(jax.random.key(1), (3, *SHAPE))
    scales = {"scale": jnp.array([0.1, 0.3, 0.5])}
    by_value = ShardedSampler(sample, sweep=True, shard="sweep")(PARAMS, keys, y, None, scales)
    by_image = ShardedSampler(sample, sweep=True)(PARAMS, keys, y, None, scales)
    assert by_value.x0.shape == by_image.x0.shape == (3, 3, *SHAPE)
    np.testing.assert_allclose(by_value.x0, by_image.x0, atol=1e-6, rtol=0)


def test_pad_batch_and_bad_settings():
    tree, n = pad_batch({"a": np.arange(5), "b": np.ones((5, 2))}, 8)
    assert n == 5 and tree["a"].shape == (8,) and list(tree["a"][5:]) == [4, 4, 4]
    with pytest.raises(ValueError, match="leading sizes differ"):
        pad_batch({"a": np.arange(5), "b": np.ones(3)}, 8)
    with pytest.raises(ValueError, match="5 entries for a batch of 4"):
        pad_batch({"a": np.arange(5)}, 4)
    with pytest.raises(ValueError, match="multiple of the device count 8"):
        ShardedBatch(lambda *a: None, batch_size=12)
    with pytest.raises(ValueError, match="shard must be"):
        ShardedSampler(lambda *a: None, shard="sweep")


def test_process_share_covers_every_item_once():
    for n in (0, 1, 5, 8, 13):
        for count in (1, 2, 3, 4):
            parts = [list(process_share(n, i, count)) for i in range(count)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
