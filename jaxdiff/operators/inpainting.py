"""Inpainting A(x) = mask * x (DPS: guided_diffusion/measurements.py, util/img_utils.py).

`op_params["mask"]` is float32 of shape (H, W, C): 1 = keep, 0 = missing. The official masks are
one mask for all channels (sample_condition.py keeps `mask[:, 0]`), so C copies of it here; noise is
added to every pixel of y, holes included (REFERENCE 5.1). Masks are drawn with jax.random, so they
match the official *distribution*, not numpy's draws.

- `inpaint`: a user-supplied mask of shape (H, W), (H, W, 1) or (H, W, C).
- `inpaint_box`: hole h, w = randint(l, hi) each, top in [margin_h, H - margin_h - h) and left in
  [margin_w, W - margin_w - w) (high exclusive, like numpy's randint in `random_sq_bbox`). Defaults
  are the box settings commented in DPS configs/inpainting_config.yaml: (128, 129), margin (16, 16).
  Also returns `op_params["box"] = [top, left, h, w]` (int32).
- `inpaint_random`: p ~ U(l, hi) once per image, then exactly int(H*W*p) pixels (without
  replacement) set to 0, shared across channels (or drawn per channel with `per_channel=True`, same
  p). Defaults (0.3, 0.7) are DPS configs/inpainting_config.yaml. Also returns `op_params["p"]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.operators.base import Operator, check_param_shape
from jaxdiff.operators.svd import MaskSVD


class _Masked(Operator):
    pixel_mask = True

    @functools.cached_property
    def svd(self):
        """U = V = I, singulars = the mask (y stays image-shaped; holes are s == 0)."""
        return MaskSVD(self.image_shape)

    def _apply(self, op_params, x):
        mask = check_param_shape(self.name, op_params, "mask", self.image_shape)
        return mask.astype(x.dtype) * x


class Inpaint(_Masked):
    """Inpainting with one fixed, user-supplied mask."""

    name = "inpaint"

    def __init__(self, image_shape, mask):
        super().__init__(image_shape)
        mask = np.asarray(mask, dtype=np.float32)
        H, W, C = self.image_shape
        if mask.shape == (H, W):
            mask = mask[..., None]
        if mask.shape not in ((H, W, 1), (H, W, C)):
            raise ValueError(
                f"inpaint: mask has shape {mask.shape}; for image_shape {self.image_shape} it must "
                f"be ({H}, {W}), ({H}, {W}, 1) or ({H}, {W}, {C})"
            )
        if not np.all(np.isfinite(mask)):
            raise ValueError("inpaint: mask has non-finite values")
        self.mask = np.broadcast_to(mask, self.image_shape).copy()

    def sample(self, key) -> dict:
        del key
        return {"mask": jnp.asarray(self.mask)}


class InpaintBox(_Masked):
    """A random box hole of random size and position (DPS `mask_generator(mask_type="box")`)."""

    name = "inpaint_box"

    def __init__(self, image_shape, mask_len_range=(128, 129), margin=(16, 16)):
        super().__init__(image_shape)
        lo, hi = (int(v) for v in mask_len_range)
        mh, mw = (int(v) for v in margin)
        H, W, _ = self.image_shape
        if not 1 <= lo < hi:
            raise ValueError(
                f"inpaint_box: mask_len_range {mask_len_range} must be (l, h) with 1 <= l < h "
                "(h exclusive, as numpy.random.randint)"
            )
        # randint(margin, size - margin - h) needs size - margin - h > margin for every h drawn.
        for size, m, axis in ((H, mh, "height"), (W, mw, "width")):
            if size - m - (hi - 1) <= m:
                raise ValueError(
                    f"inpaint_box: a box of up to {hi - 1} px with margin {m} does not fit the "
                    f"image {axis} {size} (need {size} - {m} - {hi - 1} > {m})"
                )
        self.mask_len_range = (lo, hi)
        self.margin = (mh, mw)

    def sample(self, key) -> dict:
        H, W, C = self.image_shape
        lo, hi = self.mask_len_range
        mh, mw = self.margin
        kh, kw, kt, kl = jax.random.split(key, 4)  # DPS draw order: h, w, top, left
        h = jax.random.randint(kh, (), lo, hi)
        w = jax.random.randint(kw, (), lo, hi)
        top = jax.random.randint(kt, (), mh, H - mh - h)
        left = jax.random.randint(kl, (), mw, W - mw - w)
        rows = jnp.arange(H)[:, None]
        cols = jnp.arange(W)[None, :]
        hole = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        mask = jnp.broadcast_to((~hole)[..., None], (H, W, C)).astype(jnp.float32)
        return {"mask": mask, "box": jnp.stack([top, left, h, w]).astype(jnp.int32)}


class InpaintRandom(_Masked):
    """Exactly int(H*W*p) missing pixels, p ~ U(l, h) per image (DPS `mask_type="random"`)."""

    name = "inpaint_random"

    def __init__(self, image_shape, mask_prob_range=(0.3, 0.7), per_channel=False):
        super().__init__(image_shape)
        lo, hi = (float(v) for v in mask_prob_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"inpaint_random: mask_prob_range {mask_prob_range} must satisfy 0 <= l <= h <= 1"
            )
        self.mask_prob_range = (lo, hi)
        self.per_channel = bool(per_channel)

    def sample(self, key) -> dict:
        H, W, C = self.image_shape
        n_pix = H * W
        kp, km = jax.random.split(key)
        lo, hi = self.mask_prob_range
        p = jax.random.uniform(kp, (), jnp.float32, lo, hi)
        # exactly int(H*W*p) zeros, like the reference's np.random.choice(HW, int(HW*p)); the
        # product is float32 (exact when H*W is a power of two, e.g. 256x256)
        n_zero = jnp.floor(p * n_pix).astype(jnp.int32)

        def one(k):
            # The first n_zero entries of a random permutation: n_zero pixels without replacement.
            perm = jax.random.permutation(k, n_pix)
            drop = jnp.arange(n_pix) < n_zero
            return jnp.ones(n_pix, jnp.float32).at[perm].set(jnp.where(drop, 0.0, 1.0))

        if self.per_channel:
            mask = jax.vmap(one)(jax.random.split(km, C)).T.reshape(H, W, C)
        else:
            mask = jnp.broadcast_to(one(km).reshape(H, W, 1), (H, W, C))
        return {"mask": mask, "p": p}
