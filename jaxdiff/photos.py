"""The colour photographs bundled inside scikit-image's and matplotlib's wheels, as a jit-able
crop sampler.

They let the demo prior be trained and evaluated with no download. Only photos that load offline
are listed: ``kidney``, ``lily`` and ``skin`` need pooch and a download, ``cat`` is the same array
as ``chelsea``, ``colorwheel`` and ``logo`` are graphics, the rest are greyscale. matplotlib adds
one colour photo (``grace_hopper``); its other sample images are icons, plots and data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxdiff.data import center_crop_resize, resize_short_side, to_uint8, to_unit
from jaxdiff.registry import Registry

PHOTOS: Registry[Callable[[], np.ndarray]] = Registry("photo")

# Photos of one scene (a stereo pair) must sit on the same side of a train / held-out split.
SCENES = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        img = getattr(data, name)()
        return img if index is None else img[index]

    return load


for _name in (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "immunohistochemistry",
    "hubble_deep_field",
):
    PHOTOS.register(_name)(_skimage(_name))


@PHOTOS.register("grace_hopper")
def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


PHOTOS.register("motorcycle_left")(_skimage("stereo_motorcycle", 0))
PHOTOS.register("motorcycle_right")(_skimage("stereo_motorcycle", 1))


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) float32 in [-1, 1]; an unknown name raises a KeyError listing the known ones."""
    u8 = np.asarray(PHOTOS.get(name)())
    if u8.ndim != 3 or u8.shape[-1] != 3 or u8.dtype != np.uint8:
        raise ValueError(f"photo {name!r}: expected (H, W, 3) uint8, got {u8.shape} {u8.dtype}")
    return u8.astype(np.float32) / 127.5 - 1.0


def center_crop(name: str, resolution: int, scale: float = 1.0) -> np.ndarray:
    """The central square of a photo at ``resolution`` (jaxdiff.data.center_crop_resize, as a
    folder image): the photo's short side is resized to ``resolution * scale`` first, so
    ``scale=1`` is the whole photo's central square (the view the prior saw at its coarsest
    training scale). (R, R, 3) float32 in [-1, 1]."""
    if scale < 1:
        raise ValueError(f"center_crop({name!r}): scale must be >= 1, got {scale}")
    return to_unit(np.asarray(center_crop_resize(_pil(name), resolution, scale)))


def _pil(name: str) -> Image.Image:
    return Image.fromarray(to_uint8(load_photo(name)))


def training_names(held_out: Sequence[str]) -> tuple[str, ...]:
    """Every registered photo except the held-out ones and any photo sharing a scene with them."""
    for name in held_out:
        PHOTOS.get(name)
    scenes = {SCENES.get(n, n) for n in held_out}
    return tuple(n for n in PHOTOS.names() if SCENES.get(n, n) not in scenes)


@dataclass(frozen=True)
class PhotoCrops:
    """Photos pre-resized to several scales, padded into one device array.

    ``images[i]`` is photo ``sources[i]`` resized so its short side is ``resolution * scale``;
    ``sizes[i]`` its true (H, W) before padding. Crops are taken inside the true size only.
    """

    images: jax.Array  # (N, Hmax, Wmax, 3) float32
    sizes: jax.Array  # (N, 2) int32
    sources: tuple[str, ...]
    resolution: int

    def make_batch_fn(self, batch_size: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """A pure, jit-able ``make_batch(key, step) -> (B, R, R, 3)``: random (photo, scale), crop
        position and horizontal flip per image, from ``fold_in(key, step)``."""
        images, sizes, r = self.images, self.sizes, self.resolution

        def one(key: jax.Array) -> jax.Array:
            k_img, k_y, k_x, k_flip = jax.random.split(key, 4)
            i = jax.random.randint(k_img, (), 0, images.shape[0])
            y = jax.random.randint(k_y, (), 0, sizes[i, 0] - r + 1)
            x = jax.random.randint(k_x, (), 0, sizes[i, 1] - r + 1)
            crop = jax.lax.dynamic_slice(images[i], (y, x, 0), (r, r, 3))
            return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)

        def make_batch(key: jax.Array, step: jax.Array) -> jax.Array:
            keys = jax.random.split(jax.random.fold_in(key, step), batch_size)
            return jax.vmap(one)(keys)

        return make_batch


def make_crops(names: Sequence[str], resolution: int, scales: Sequence[float]) -> PhotoCrops:
    """Load ``names`` and resize each to every scale (short side = ``resolution * scale``)."""
    if not names:
        raise ValueError("make_crops: no photos given")
    if min(scales) < 1:
        raise ValueError(f"make_crops: scales must be >= 1 (a crop fits the photo), got {scales}")
    levels, sources = [], []
    for name in names:
        img = _pil(name)
        for s in scales:
            levels.append(to_unit(np.asarray(resize_short_side(img, round(resolution * s)))))
            sources.append(name)
    hmax = max(x.shape[0] for x in levels)
    wmax = max(x.shape[1] for x in levels)
    stack = np.zeros((len(levels), hmax, wmax, 3), np.float32)
    for i, x in enumerate(levels):
        stack[i, : x.shape[0], : x.shape[1]] = x
    sizes = np.array([x.shape[:2] for x in levels], np.int32)
    return PhotoCrops(jnp.asarray(stack), jnp.asarray(sizes), tuple(sources), resolution)


def training_crops(
    held_out: Sequence[str],
    resolution: int,
    scales: Sequence[float],
    names: Sequence[str] | None = None,
) -> PhotoCrops:
    """Crops of ``names`` (default: every photo but the held-out ones and their scene mates);
    a held-out photo, or one of its scene, among ``names`` raises a ValueError."""
    allowed = training_names(held_out)
    if names is None:
        names = allowed
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"training photos {bad} are held out (or share a scene with {held_out})")
    crops = make_crops(names, resolution, scales)
    assert not set(crops.sources) & set(held_out), "held-out photo in the training set"
    return crops
