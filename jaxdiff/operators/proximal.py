"""Data-proximal steps: argmin_x ||y - A x||^2 + rho ||x - z||^2 for one image (HWC).

DiffPIR's data subproblem (Zhu et al. 2023, eq. 13; docs/methods.md). Closed forms where
the operator really has one, conjugate gradients otherwise:

- masks (`inpaint*`) and the identity (`denoise`): A is diagonal, x = (m y + rho z) / (m^2 + rho)
  (main_ddpir_inpainting.py writes (m y + rho z) / (m + rho), the same for 0/1 masks);
- `circular_blur` (circular convolution, then keep pixel [0::sf, 0::sf]; DiffPIR's
  utils_sisr.p2o / upsample / downsample model of deblurring and SR): in Fourier, with
  FB = p2o(k), Fy the (H/sf, W/sf) spectrum of y and mean_sf the mean over the sf x sf blocks of
  an H x W spectrum (the spectrum of the decimation),
      X = Fz + conj(FB) * tile((Fy - mean_sf(FB Fz)) / (mean_sf(|FB|^2) + rho)).
  This is utils_sisr.data_solution's answer without its cancellation: the official Woodbury form
  (FR - conj(FB) tile(mean_sf(FB FR) / (mean_sf(|FB|^2) + rho))) / rho with FR = conj(FB) F(S^T y)
  + rho Fz subtracts two nearly equal numbers and divides by rho, losing ~eps32 |FB|^2 / rho
  relative accuracy (0.14 absolute at DiffPIR's first step in float32); `form="official"` keeps it;
- any other linear operator: `cg_iters` conjugate-gradient steps on (A^T A + rho I) x = A^T y +
  rho z from x = z, matrix-free with `apply` / `adjoint` (no closed form is assumed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.operators.base import Operator, check_param_shape


def p2o(kernel, shape):
    """utils_sisr.p2o: the kernel in the top-left corner of an H x W zero array, rolled by
    -(kh // 2, kw // 2), 2-D FFT -> (H, W) complex: the transfer function of the circular
    (true) convolution with the kernel centred at index k // 2."""
    kh, kw = kernel.shape
    h, w = shape
    otf = jnp.zeros((h, w), kernel.dtype).at[:kh, :kw].set(kernel)
    otf = jnp.roll(otf, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return jnp.fft.fft2(otf)


def _fft2(x):
    return jnp.fft.fft2(x, axes=(0, 1))


def _ifft2_real(x):
    return jnp.real(jnp.fft.ifft2(x, axes=(0, 1)))


def mean_splits(a, sf: int):
    """utils_sisr.splits + mean: average the sf x sf blocks (H/sf x W/sf each) of a spectrum
    (H, W, ...) -> (H/sf, W/sf, ...). For sf = 1 the identity."""
    if sf == 1:
        return a
    h, w = a.shape[:2]
    b = a.reshape(sf, h // sf, sf, w // sf, *a.shape[2:])
    return b.mean(axis=(0, 2))


def _tile(a, sf: int):
    return jnp.tile(a, (sf, sf) + (1,) * (a.ndim - 2)) if sf > 1 else a


def upsample_zero(y, sf: int):
    """utils_sisr.upsample (S^T): zero-filled, each LR pixel top-left in its sf x sf block."""
    if sf == 1:
        return y
    h, w = y.shape[:2]
    return jnp.zeros((h * sf, w * sf, *y.shape[2:]), y.dtype).at[::sf, ::sf].set(y)


def fft_prox(fb, y, z, rho, sf: int = 1, form: str = "stable"):
    """argmin_x ||y - S(k (*) x)||^2 + rho ||x - z||^2 per channel; fb = p2o(k) (H, W)."""
    fb = fb[..., None] if fb.ndim == 2 else fb
    fbc = jnp.conj(fb)
    f2b = jnp.real(fb * fbc)
    inv_w = mean_splits(f2b, sf)
    rho = jnp.asarray(rho, z.dtype)
    fz = _fft2(z)
    if form == "stable":
        resid = _fft2(y) - mean_splits(fb * fz, sf)
        return z + _ifft2_real(fbc * _tile(resid / (inv_w + rho), sf))
    if form == "official":
        fr = fbc * _fft2(upsample_zero(y, sf)) + _fft2(rho * z)
        fbr = mean_splits(fb * fr, sf)
        return _ifft2_real((fr - fbc * _tile(fbr / (inv_w + rho), sf)) / rho)
    raise ValueError(f"fft_prox: form must be 'stable' or 'official', got {form!r}")


def mask_prox(mask, y, z, rho):
    """Diagonal A = mask: (m y + rho z) / (m^2 + rho), elementwise."""
    m = jnp.asarray(mask, z.dtype)
    return (m * y + rho * z) / (m * m + rho)


def cg_prox(apply, adjoint, y, z, rho, iters: int):
    """`iters` CG steps on (A^T A + rho I) x = A^T y + rho z from x = z (matrix-free)."""

    def normal(v):
        return adjoint(apply(v)) + rho * v

    def dot(a, b):
        return jnp.sum(a * b)

    r = adjoint(y - apply(z))  # b - N z with b = A^T y + rho z
    x, p, rs = z, r, dot(r, r)
    tiny = jnp.finfo(z.dtype).tiny

    def body(_, carry):
        x, r, p, rs = carry
        q = normal(p)
        alpha = rs / jnp.maximum(dot(p, q), tiny)
        x = x + alpha * p
        r = r - alpha * q
        rs_new = dot(r, r)
        p = r + (rs_new / jnp.maximum(rs, tiny)) * p
        return x, r, p, rs_new

    x, *_ = jax.lax.fori_loop(0, int(iters), body, (x, r, p, rs))
    return x


class CircularBlur(Operator):
    """Circular convolution with a kernel, then s-fold decimation [0::sf, 0::sf] (DiffPIR's
    utils_sisr model: `scipy.ndimage.convolve(mode='wrap')` for deblurring, blur + upper-left
    downsampling for SR). `kernel` fixed here, or per image in `op_params["kernel"]`."""

    name = "circular_blur"

    def __init__(self, image_shape, kernel=None, kernel_shape=None, sf: int = 1):
        super().__init__(image_shape)
        h, w, _ = self.image_shape
        self.sf = int(sf)
        if self.sf < 1 or h % self.sf or w % self.sf:
            raise ValueError(f"circular_blur: sf={sf} must divide the image size {h}x{w}")
        self.kernel = None if kernel is None else np.asarray(kernel, np.float32)
        if self.kernel is not None:
            kernel_shape = self.kernel.shape
        if kernel_shape is None or len(kernel_shape) != 2:
            raise ValueError("circular_blur: give kernel=(kh, kw) array or kernel_shape=(kh, kw)")
        self.kernel_shape = tuple(int(s) for s in kernel_shape)
        if self.kernel_shape[0] > h or self.kernel_shape[1] > w:
            raise ValueError(f"circular_blur: kernel {self.kernel_shape} exceeds image {h}x{w}")

    def sample(self, key) -> dict:
        del key
        if self.kernel is None:
            raise ValueError("circular_blur: no fixed kernel; pass op_params={'kernel': k}")
        return {"kernel": jnp.asarray(self.kernel)}

    def otf(self, op_params, dtype=jnp.float32):
        k = check_param_shape(self.name, op_params, "kernel", self.kernel_shape)
        return p2o(jnp.asarray(k, dtype), self.image_shape[:2])

    def _apply(self, op_params, x):
        fb = self.otf(op_params, x.dtype)
        out = _ifft2_real(fb[..., None] * _fft2(x))
        return out[:: self.sf, :: self.sf]

    def _output_shape(self):
        h, w, c = self.image_shape
        return (h // self.sf, w // self.sf, c)

    def proximal(self, op_params, y, z, rho, form: str = "stable"):
        return fft_prox(self.otf(op_params, z.dtype), y, z, rho, self.sf, form)


MASKED = ("inpaint", "inpaint_box", "inpaint_random")


def data_prox(operator, cg_iters: int = 50, form: str = "stable"):
    """prox(op_params, y, z, rho) -> argmin_x ||y - A x||^2 + rho ||x - z||^2 for `operator`, and
    the kind used ("fft", "mask", "identity", "cg"). Nonlinear operators raise ValueError."""
    name = getattr(operator, "name", type(operator).__name__)
    if not getattr(operator, "linear", False):
        raise ValueError(f"data_prox: {name!r} is nonlinear; the data step needs a linear A")
    if hasattr(operator, "proximal"):
        return (lambda p, y, z, rho: operator.proximal(p, y, z, rho, form=form)), "fft"
    if name in MASKED:

        def masked(p, y, z, rho):
            m = check_param_shape(name, p, "mask", operator.image_shape)
            return mask_prox(m, y, z, rho)

        return masked, "mask"
    if name == "denoise":
        return (lambda p, y, z, rho: (y + rho * z) / (1 + rho)), "identity"

    def cg(p, y, z, rho):
        return cg_prox(
            lambda v: operator.apply(p, v), lambda u: operator.adjoint(p, u), y, z, rho, cg_iters
        )

    return cg, "cg"


def gaussian_posterior_sampler(operator, cg_iters: int = 50):
    """sample(op_params, y, x, sigma, rho, n, n_y) -> z ~ p(z | x, y), the Gaussian
    N(y; A z, sigma^2) N(z; x, rho^2) of a linear A (PnP-DM's likelihood step, docs/methods.md),
    and the kind used ("fft", "svd" or "perturb"). n: N(0, I) of the image's shape, n_y: of y's.

    - "fft" (`circular_blur` with sf = 1, PnP-DM's gaussian_blur_circ): C = (|FB|^2 / sigma^2 +
      1 / rho^2)^-1 in Fourier, z = F^-1 C F (A^T y / sigma^2 + x / rho^2) + F^-1 sqrt(C) F n
      (pnpdm/tasks/gaussian_blur.py proximal_generator; n_y unused);
    - "svd" (an operator with `.svd`, PnP-DM's super_resolution_svd): the same in the spectral
      basis, C = V diag(1 / (s^2 / sigma^2 + 1 / rho^2)) V^T (s padded with zeros to the image
      size), z = V (C_s Vt(A^T y / sigma^2 + x / rho^2) + sqrt(C_s) n) with n flattened
      channel-major (torch's NCHW reshape; tasks/__init__.py LinearSVDOperator.proximal_generator);
    - "perturb" (any other linear A): perturb-and-MAP, z = argmin ||y + sigma n_y - A z||^2 +
      (sigma / rho)^2 ||z - x - rho n||^2, an exact sample (its mean is the posterior mean, its
      covariance C), solved by `data_prox` (closed form for masks / identity, else CG).
    """
    name = getattr(operator, "name", type(operator).__name__)
    if not getattr(operator, "linear", False):
        raise ValueError(f"gaussian_posterior_sampler: {name!r} is nonlinear")
    if name == "circular_blur" and getattr(operator, "sf", 1) == 1:

        def fft_sample(p, y, x, sigma, rho, n, n_y):
            del n_y
            fb = operator.otf(p, x.dtype)
            power = jnp.real(fb * jnp.conj(fb))[..., None]
            inv = 1 / (power / sigma**2 + 1 / rho**2)
            noise = _ifft2_real(jnp.sqrt(inv) * _fft2(n))
            mu = _ifft2_real(inv * _fft2(operator.adjoint(p, y / sigma**2) + x / rho**2))
            return mu + noise

        return fft_sample, "fft"
    svd = getattr(operator, "svd", None)
    if svd is not None:

        def svd_sample(p, y, x, sigma, rho, n, n_y):
            del n_y
            s = jnp.zeros((svd.size,), x.dtype).at[: svd.rank].set(svd.singulars(p))
            q = 1 / (s**2 / sigma**2 + 1 / rho**2)
            flat_n = jnp.transpose(n, (2, 0, 1)).reshape(-1)  # channel-major, as torch's NCHW
            noise = svd.V(p, jnp.sqrt(q) * flat_n)
            mu = svd.V(p, q * svd.Vt(p, svd.Ht(p, y / sigma**2) + x / rho**2))
            return mu + noise

        return svd_sample, "svd"
    prox, _ = data_prox(operator, cg_iters)

    def perturb(p, y, x, sigma, rho, n, n_y):
        return prox(p, y + sigma * n_y, x + rho * n, (sigma / rho) ** 2)

    return perturb, "perturb"
