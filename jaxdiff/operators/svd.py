"""Matrix-free SVD forms H = U diag(s) V^T of the linear operators, for ONE image.

DDRM (Kawar et al., NeurIPS 2022), DDNM (Wang et al., ICLR 2023), PiGDM (Song et al., ICLR 2023)
and RED-diff work in the spectral basis of the operator. Their official codes do so through
"H_functions" (bahjat-kawar/ddrm functions/svd_replacement.py); this is the same protocol, pure
and jit/vmap-able, driven by `op_params` so that random masks stay per image:

    s = svd.singulars(op_params)      # (m,)  m = svd.rank, static; entries may be 0
    v = svd.Vt(op_params, x)          # (D,)  x an image (H, W, C); D = svd.size = H * W * C
    x = svd.V(op_params, v)           # (H, W, C)
    u = svd.Ut(op_params, y)          # (m,)  y in the operator's output layout (svd.y_shape)
    y = svd.U(op_params, u)
    svd.H(op_params, x) = U(s * Vt(x)[:m]);  svd.Ht(op_params, y) = V([s * Ut(y), 0])
    svd.H_pinv(op_params, y) = V([Ut(y) / s, 0]) with 1/0 -> 0 (Moore-Penrose)

Conventions every method must respect:
- the first m spectral coordinates are paired with `singulars`, the last D - m have singular 0;
- singulars are NOT sorted and may be exactly 0 inside [0, m): inpainting keeps y image-shaped
  (the masked image, as `inpaint*.apply` returns it), so its rank is static and its singulars are
  the mask itself. A coordinate with s == 0 is unobserved, wherever it sits.
- U and V are orthogonal (U^T U = I on R^m, V^T V = I on R^D).

`op.svd` is None for operators without a tractable SVD (motion blur, a non-separable `blur`
kernel, phase retrieval). The official H_functions, with their documented defects, are in
`jaxdiff.operators.official_svd` (same protocol, flat channel-major vectors).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

_HIGHEST = lax.Precision.HIGHEST
PINV_ZERO_MODES = ("zero", "pass", "divide")


class SVDForm:
    """Base class: subclasses implement singulars, Vt, V, Ut, U; H, Ht, H_pinv are derived.

    `pinv_zero` says what H_pinv does with a zero singular value: "zero" (Moore-Penrose, the
    default), "pass" (the coordinate passes through unchanged, as RED-diff / PiGDM
    utils/degredations.py do) or "divide" (1/0 = inf, as DDRM's H_functions.H_pinv does).
    """

    def __init__(self, image_shape, y_shape, rank: int, pinv_zero: str = "zero"):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.y_shape = tuple(int(s) for s in y_shape)
        self.size = int(np.prod(self.image_shape))
        self.rank = int(rank)
        if not 0 < self.rank <= self.size:
            raise ValueError(f"{type(self).__name__}: rank {rank} must be in [1, {self.size}]")
        if pinv_zero not in PINV_ZERO_MODES:
            raise ValueError(f"pinv_zero must be one of {PINV_ZERO_MODES}, got {pinv_zero!r}")
        self.pinv_zero = pinv_zero

    # --- the protocol (subclasses) ----------------------------------------------------------
    def singulars(self, op_params):
        raise NotImplementedError

    def Vt(self, op_params, x):
        raise NotImplementedError

    def V(self, op_params, v):
        raise NotImplementedError

    def Ut(self, op_params, y):
        raise NotImplementedError

    def U(self, op_params, u):
        raise NotImplementedError

    # --- derived ------------------------------------------------------------------------------
    def pad(self, u):
        """(m,) -> (D,): trailing zeros for the coordinates without a singular value."""
        return jnp.concatenate([u, jnp.zeros((self.size - self.rank,), u.dtype)])

    def H(self, op_params, x):
        s = self.singulars(op_params).astype(x.dtype)
        return self.U(op_params, s * self.Vt(op_params, x)[: self.rank])

    def Ht(self, op_params, y):
        s = self.singulars(op_params).astype(y.dtype)
        return self.V(op_params, self.pad(s * self.Ut(op_params, y)))

    def H_pinv(self, op_params, y):
        s = self.singulars(op_params).astype(y.dtype)
        u = self.Ut(op_params, y)
        if self.pinv_zero == "divide":
            w = u / s
        else:
            nz = s != 0
            w = jnp.where(nz, u / jnp.where(nz, s, 1), 0 if self.pinv_zero == "zero" else u)
        return self.V(op_params, self.pad(w))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_shape={self.image_shape}, y_shape={self.y_shape}, "
            f"rank={self.rank})"
        )


class IdentitySVD(SVDForm):
    """Denoising: H = I, every singular value 1."""

    def __init__(self, image_shape):
        super().__init__(image_shape, image_shape, int(np.prod(image_shape)))

    def singulars(self, op_params):
        return jnp.ones((self.rank,), jnp.float32)

    def Vt(self, op_params, x):
        return x.reshape(-1)

    def V(self, op_params, v):
        return v.reshape(self.image_shape)

    Ut = Vt
    U = V


class MaskSVD(SVDForm):
    """Inpainting y = mask * x (image-shaped): U = V = I and the singular values are the mask.

    Keeping y image-shaped (holes included) keeps the rank static, so per-image random masks
    (inpaint_box, inpaint_random) vmap; the holes are the s == 0 coordinates.
    """

    def __init__(self, image_shape, key: str = "mask"):
        super().__init__(image_shape, image_shape, int(np.prod(image_shape)))
        self.key = key

    def singulars(self, op_params):
        return jnp.asarray(op_params[self.key]).reshape(-1)

    def Vt(self, op_params, x):
        return x.reshape(-1)

    def V(self, op_params, v):
        return v.reshape(self.image_shape)

    Ut = Vt
    U = V


class PixelSVD(SVDForm):
    """A (1, C) matrix applied to every pixel (colorization): y (H, W, 1) = sum_c w_c x_c.

    Spectral layout: the H*W coefficients on w / |w| first (singular |w|), then the C - 1
    coefficients of the orthogonal complement of every pixel, (pixel, component) order.
    """

    def __init__(self, image_shape, weights):
        H, W, C = image_shape
        w = np.asarray(weights, np.float64).reshape(1, C)
        u, s, vt = np.linalg.svd(w, full_matrices=True)
        super().__init__(image_shape, (H, W, 1), H * W)
        self.u_small = float(u[0, 0])
        self.s_small = float(s[0])
        self.vt_small = vt.astype(np.float32)  # (C, C), row 0 = +-w / |w|

    def singulars(self, op_params):
        return jnp.full((self.rank,), self.s_small, jnp.float32)

    def Vt(self, op_params, x):
        coef = jnp.einsum("kc,hwc->hwk", jnp.asarray(self.vt_small, x.dtype), x, precision=_HIGHEST)
        return jnp.concatenate([coef[..., 0].reshape(-1), coef[..., 1:].reshape(-1)])

    def V(self, op_params, v):
        H, W, C = self.image_shape
        coef = jnp.concatenate(
            [v[: H * W].reshape(H, W, 1), v[H * W :].reshape(H, W, C - 1)], axis=-1
        )
        return jnp.einsum(
            "kc,hwk->hwc", jnp.asarray(self.vt_small, v.dtype), coef, precision=_HIGHEST
        )

    def Ut(self, op_params, y):
        return self.u_small * y.reshape(-1)

    def U(self, op_params, u):
        return (self.u_small * u).reshape(self.y_shape)


class SeparableSVD(SVDForm):
    """y_c = M_h X_c M_w^T for every channel c, with M_h (h, H), M_w (w, W), h <= H, w <= W.

    Covers super-resolution (DPS's bicubic Resizer, block averaging) and separable blur (the
    reflect-padded 1-D matrices). With M = U_s diag(s) V_s^T per axis, Z_c = V_h^T X_c V_w; the
    spectral vector is Z[:h, :w, :] (singulars s_h[i] s_w[j], (i, j, c) order), then Z[h:, :, :]
    and Z[:h, w:, :], flattened. The 1-D SVDs are computed once in float64 (numpy); singular
    values below `rcond` times the largest are set to 0 (H changes by less than float32 rounding).
    """

    def __init__(self, image_shape, mat_h, mat_w, rcond: float = 1e-6):
        H, W, C = image_shape
        mh = np.asarray(mat_h, np.float64)
        mw = np.asarray(mat_w, np.float64)
        h, w = mh.shape[0], mw.shape[0]
        if mh.shape[1] != H or mw.shape[1] != W or h > H or w > W:
            raise ValueError(
                f"SeparableSVD: matrices {mh.shape}, {mw.shape} do not downsample/preserve an "
                f"image of {H}x{W} (need (h <= {H}, {H}) and (w <= {W}, {W}))"
            )
        uh, sh, vht = np.linalg.svd(mh, full_matrices=True)
        uw, sw, vwt = np.linalg.svd(mw, full_matrices=True)
        super().__init__(image_shape, (h, w, C), h * w * C)
        self.hw = (h, w)
        self.u_h, self.u_w = uh.astype(np.float32), uw.astype(np.float32)
        self.vt_h, self.vt_w = vht.astype(np.float32), vwt.astype(np.float32)
        s2 = np.outer(sh, sw)
        s2[s2 <= rcond * s2.max()] = 0.0  # float32 cannot resolve them; keeps H_pinv bounded
        s = np.broadcast_to(s2[:, :, None], (h, w, C))
        self.s = s.reshape(-1).astype(np.float32)

    def singulars(self, op_params):
        return jnp.asarray(self.s)

    def _sandwich(self, left, x, right):
        """left @ X_c @ right^T per channel."""
        t = jnp.einsum("ih,hwc->iwc", jnp.asarray(left, x.dtype), x, precision=_HIGHEST)
        return jnp.einsum("jw,iwc->ijc", jnp.asarray(right, x.dtype), t, precision=_HIGHEST)

    def Vt(self, op_params, x):
        h, w = self.hw
        z = self._sandwich(self.vt_h, x, self.vt_w)
        return jnp.concatenate([z[:h, :w].reshape(-1), z[h:].reshape(-1), z[:h, w:].reshape(-1)])

    def V(self, op_params, v):
        H, W, C = self.image_shape
        h, w = self.hw
        a, b = h * w * C, (H - h) * W * C
        top = jnp.concatenate([v[:a].reshape(h, w, C), v[a + b :].reshape(h, W - w, C)], axis=1)
        z = jnp.concatenate([top, v[a : a + b].reshape(H - h, W, C)], axis=0)
        return self._sandwich(self.vt_h.T, z, self.vt_w.T)

    def Ut(self, op_params, y):
        return self._sandwich(self.u_h.T, y, self.u_w.T).reshape(-1)

    def U(self, op_params, u):
        return self._sandwich(self.u_h, u.reshape(self.y_shape), self.u_w)


def separable_factors(kernel, tol: float = 1e-6):
    """(k_rows, k_cols) with outer(k_rows, k_cols) == kernel for a rank-1 kernel, else None."""
    k = np.asarray(kernel, np.float64)
    u, s, vt = np.linalg.svd(k)
    if s[0] == 0 or (s.shape[0] > 1 and s[1] > tol * s[0]):
        return None
    scale = np.sqrt(s[0])
    a, b = u[:, 0] * scale, vt[0] * scale
    if a.sum() < 0:  # a positive kernel gets positive factors
        a, b = -a, -b
    return a, b
