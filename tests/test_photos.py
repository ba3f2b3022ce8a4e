"""The bundled-photo crop sampler: determinism per key, held-out photos kept out by construction."""

import jax
import numpy as np
import pytest

from jaxdiff import photos
from jaxdiff.photos import PHOTOS, SCENES

HELD_OUT = ("astronaut", "chelsea", "coffee")
SMALL = ("rocket", "immunohistochemistry")  # two quick-to-load training photos


@pytest.fixture(scope="module")
def crops():
    return photos.training_crops(HELD_OUT, 8, (1.0, 2.0), names=SMALL)


def test_batch_is_a_pure_function_of_key_and_step(crops):
    make = jax.jit(crops.make_batch_fn(6))
    key = jax.random.key(3)
    a, b = np.asarray(make(key, 5)), np.asarray(make(key, 5))
    assert a.shape == (6, 8, 8, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert -1.0 <= a.min() and a.max() <= 1.0
    assert not np.allclose(a, np.asarray(make(key, 6)))  # another step
    assert not np.allclose(a, np.asarray(make(jax.random.key(4), 5)))  # another key
    # The crops inside one batch differ from each other too.
    assert len({x.tobytes() for x in a}) == len(a)


def test_crops_come_from_inside_the_true_photo(crops):
    # The padding is exact 0.0, which no photo pixel can be (u8 / 127.5 - 1 is never 0).
    assert np.any(np.asarray(crops.images) == 0.0)  # the padding exists
    x = np.asarray(jax.jit(crops.make_batch_fn(256))(jax.random.key(0), 0))
    assert not np.any(x == 0.0)


def test_held_out_photos_never_reach_training(crops):
    names = photos.training_names(HELD_OUT)
    assert not set(names) & set(HELD_OUT)
    assert set(names) | set(HELD_OUT) == set(PHOTOS.names())
    assert set(crops.sources) == set(SMALL)
    with pytest.raises(ValueError, match="held out"):
        photos.training_crops(HELD_OUT, 8, (1.0,), names=("rocket", "coffee"))


def test_a_stereo_pair_is_held_out_together():
    assert SCENES["motorcycle_left"] == SCENES["motorcycle_right"]
    names = photos.training_names(("motorcycle_left",))
    assert "motorcycle_right" not in names and "motorcycle_left" not in names


def test_center_crop_and_load_photo():
    x = photos.center_crop("coffee", 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() < x.max() <= 1.0
    full = photos.load_photo("coffee")
    assert full.shape == (400, 600, 3)
    with pytest.raises(KeyError, match="unknown photo 'lena'"):
        photos.load_photo("lena")
    with pytest.raises(ValueError, match="scale"):
        photos.center_crop("coffee", 16, scale=0.5)
