"""DDNM and DDNM+ (Wang et al., ICLR 2023, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model"; official code wyhuai/DDNM functions/svd_ddnm.py; docs/methods.md).

Both run the DDIM-like chain of the official code with the operator in SVD form A = U S V^T
(`operator.svd`, jaxdiff/operators/svd.py). At respaced step k (abar = a_t, abar_prev = a_s):

    x0     = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)                       (no clamp)
    DDNM:  x0^ = x0 - A^+ (A x0 - y)                                   (range-space replacement)
           x_s = sqrt(a_s) x0^ + sigma_s (eta z + sqrt(1 - eta^2) eps),  sigma_s = sqrt(1 - a_s)
    DDNM+: per spectral coordinate j with singular s_j (0 in the null space), a = sqrt(a_s):
           lambda_j = s_j sigma_s sqrt(1 - eta^2) / (a sigma_y) if sigma_s < a sigma_y / s_j, else 1
           x0^ = x0 - V(lambda * V^T A^+ (A x0 - y))
           x_s = a x0^ + V(d1 * V^T z + d2 * V^T eps)
           d1, d2 = sigma_s eta, 0                                 where sigma_s < a sigma_y / s_j
                  = sqrt(sigma_s^2 - a^2 sigma_y^2 / s_j^2), 0     where sigma_s > a sigma_y / s_j
                  = sigma_s eta, sigma_s sqrt(1 - eta^2)           otherwise and where s_j = 0
           sigma_y = 0 gives lambda = 1 and the DDNM noise (the official `sigma_y != 0` guard).

Parity option `official=True` (DDNM+): the official Lambda_noise skips V^T before scaling for
super-resolution, deblurring and colorization (wyhuai/DDNM issue #12): it scales the raw pixel
entries laid out in spectral order and then applies V (`official_noise_coords`). For white noise
this is harmless in distribution, but eps is rotated differently. `lambda_singulars` (static,
(D,)) overrides the singular value paired with each spectral coordinate in lambda / d1 / d2: the
official deblurring pairs the UNthresholded 2-D singulars with each sorted position there. The
default is the correct form: V^T and the SVD's own singulars.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    noise_sigma,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)

NEEDS = ("operator", "linear", "svd", "measurement")


@register_sampler("ddnm", needs=NEEDS, hparams={"eta": 0.85}, ranges={"eta": "[0, 1]"})
def make_ddnm(model_fn, schedule, *, operator=None, noise=None, defaults, loop, **options):
    """DDNM (the paper's Algorithm 1, `ddnm_diffusion`): exact range-space replacement.

    `sample(params, key, y, op_params, hparams={"eta"}, replay=None, valid=True)`; y in the
    SVD's measurement layout. replay: {"x_T": (H,W,C), "noise": (K,H,W,C)}; the trajectory
    records x0 (x0_t), x0_hat (x0_t_hat) and eps (et).
    """
    return _make("ddnm", False, model_fn, schedule, operator, noise, defaults, loop, **options)


@register_sampler(
    "ddnm_plus",
    needs=NEEDS,
    hparams={"eta": 0.85, "sigma": None},
    ranges={"eta": "[0, 1]", "sigma": "[0, 2]"},
)
def make_ddnm_plus(model_fn, schedule, *, operator=None, noise=None, defaults, loop, **options):
    """DDNM+ (`ddnm_plus_diffusion`): the range-space correction and the noise scaled per
    singular value for noisy y. hparams: eta, sigma (the paper's sigma_y, the noise std on y's
    scale; default: the noise model's, which the experiment passes traced, like Score-ALD's).
    `official=True` reproduces the official noise step (module doc). The trajectory also
    records pinv_res and the noise term (Lambda_noise_out)."""
    return _make("ddnm_plus", True, model_fn, schedule, operator, noise, defaults, loop, **options)


def _make(
    name,
    plus,
    model_fn,
    schedule,
    operator,
    noise,
    defaults,
    loop,
    *,
    image_shape=None,
    official: bool = False,
    lambda_singulars=None,
    travel_length: int = 1,
    travel_repeat: int = 1,
    dtype=jnp.float32,
):
    svd = getattr(operator, "svd", None)
    if svd is None:
        op_name = getattr(operator, "name", type(operator).__name__)
        raise ValueError(
            f"{name}: needs an operator in SVD form (operator.svd); {op_name!r} has none"
        )
    shape = resolve_image_shape(image_shape, operator, None, name)
    size = math.prod(shape)
    if plus and defaults.get("sigma") is None:
        defaults = {**defaults, "sigma": noise_sigma(noise)}
    steps = np.arange(schedule.num_steps)[::-1]
    pairs = _travel_pairs(name, schedule, int(travel_length), int(travel_repeat))
    if pairs is not None:
        steps = np.arange(len(pairs["k"]))  # one scan step per pair of the official walk
    noise_vt = official_noise_coords(svd) if official else svd.Vt
    if lambda_singulars is not None:
        lambda_singulars = np.asarray(lambda_singulars, np.float32).reshape(-1)
        if lambda_singulars.shape != (size,):
            raise ValueError(
                f"{name}: lambda_singulars must have {size} entries (one per coordinate)"
            )

    def spectral_singulars(op_params):
        if lambda_singulars is not None:
            return jnp.asarray(lambda_singulars)
        s = svd.singulars(op_params)
        return jnp.zeros((size,), s.dtype).at[: s.shape[0]].set(s)

    def residual_pinv(op_params, x0, y):
        """A^+ (A x0 - y), as an image."""
        return svd.H_pinv(op_params, svd.H(op_params, x0) - y)

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, name)
        eta = h["eta"].astype(dtype)
        if y is None:
            raise ValueError(f"{name}: needs the measurement y")
        y = jnp.asarray(y, dtype)
        want = jax.eval_shape(
            lambda x: svd.H(op_params, x), jax.ShapeDtypeStruct(shape, dtype)
        ).shape
        if tuple(y.shape) != tuple(want):
            raise ValueError(
                f"{name}: the SVD maps an image {shape} to {tuple(want)}, but y has shape "
                f"{tuple(y.shape)} (one image; batch with batched())"
            )
        x_T, k_loop = initial_x(key, replay, shape, dtype, name)
        if plus:
            sigma_y = h["sigma"].astype(dtype)
            s = spectral_singulars(op_params).astype(dtype)
            inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)

        def step(x, k, z, state):
            if pairs is None:
                return model_step(x, k, z, state)
            p = k
            k_p, k_next = jnp.asarray(pairs["k"])[p], jnp.asarray(pairs["k_next"])[p]
            return jax.lax.cond(
                jnp.asarray(pairs["travel"])[p],
                lambda: travel_back(x, k_next, z, state),
                lambda: model_step(x, k_p, z, state),
            )

        def travel_back(x, k_next, z, x0_last):
            """The official time-travel pair: the last x0 re-noised up to t_next (no model)."""
            a_next = schedule.gather(k_next, dtype)["alphas_cumprod"]
            x_next = jnp.sqrt(a_next) * x0_last + z * jnp.sqrt(1.0 - a_next)
            nan = jnp.full_like(x, jnp.nan)  # what the official branch does not compute
            record = {"x0": x0_last, "eps": nan, "x0_hat": nan}
            if plus:
                record = {**record, "pinv_res": nan, "noise_term": nan}
            return x_next, x0_last, record

        def model_step(x, k, z, state):
            pred = predict_x0(model_fn, params, schedule, x, k, clip_denoised=False)
            x0, eps, c = pred["x0"], pred["eps"], pred["c"]
            a_next = c["alphas_cumprod_prev"]
            a = jnp.sqrt(a_next)
            sigma_t = jnp.sqrt(1.0 - a_next)
            res = residual_pinv(op_params, x0, y)
            record = {"x0": x0, "eps": eps}
            if not plus:
                x0_hat = x0 - res
                x_next = a * x0_hat + sigma_t * eta * z + sigma_t * jnp.sqrt(1.0 - eta**2) * eps
                return x_next, x0, {**record, "x0_hat": x0_hat}
            lam, d1, d2 = ddnm_plus_coefficients(s, inv, a, sigma_y, sigma_t, eta)
            x0_hat = x0 - svd.V(op_params, lam * svd.Vt(op_params, res))
            noise_term = svd.V(op_params, d1 * noise_vt(op_params, z)) + svd.V(
                op_params, d2 * noise_vt(op_params, eps)
            )
            x_next = a * x0_hat + noise_term
            record = {**record, "x0_hat": x0_hat, "pinv_res": res, "noise_term": noise_term}
            return x_next, x0, record

        x0_last = jnp.zeros(shape, dtype)  # the state: the last x0, which time travel re-noises
        return chain(
            step, x_T, steps, key=k_loop, replay=replay, loop=loop, label=name, state=x0_last
        )

    return sample


def _travel_pairs(name, schedule, travel_length: int, travel_repeat: int):
    """None without time travel; else the official walk (`time_grids.ddnm_walk`) as respaced
    indices per pair: k (the model's step), k_next (a travel pair's target) and travel."""
    from jaxdiff.diffusion.time_grids import ddnm_walk

    if travel_repeat == 1:
        return None
    n, t_train = schedule.num_steps, schedule.num_train_timesteps
    walk = ddnm_walk(n, t_train, travel_length, travel_repeat)
    kept = [int(t) for t in schedule.timestep_map]
    if kept != sorted({t for t, _ in walk}):
        raise ValueError(
            f"{name}: time travel walks DDNM's grid; use respacing 'ddnm{n}' (got {kept[:4]}...)"
        )
    index = {t: i for i, t in enumerate(kept)}
    return {
        "k": np.array([index[t] for t, _ in walk], np.int32),
        "k_next": np.array([index.get(j, 0) for _, j in walk], np.int32),
        "travel": np.array([j > t for t, j in walk]),
    }


def ddnm_plus_coefficients(s, inv, a, sigma_y, sigma_t, eta):
    """(lambda, d1, d2) per spectral coordinate (Wang et al. 2023, eqs. 17 and 51, as the
    official Lambda / Lambda_noise form them; strict inequalities, ties keep the defaults).
    sigma_y = 0 keeps lambda = 1 and the DDNM noise split (the official guard)."""
    root = jnp.sqrt(1.0 - eta**2)
    thr = a * sigma_y * inv
    below = sigma_t < thr
    above = sigma_t > thr
    noisy = sigma_y != 0
    lam = jnp.where(below & noisy, s * sigma_t * root / (a * sigma_y), 1.0)
    d1_default, d2_default = sigma_t * eta, sigma_t * root
    big = jnp.sqrt(jnp.maximum(sigma_t**2 - a**2 * sigma_y**2 * inv**2, 0.0))
    d1 = jnp.where(below, d1_default, jnp.where(above, big, d1_default))
    d2 = jnp.where(below | above, 0.0, d2_default)
    keep = (s == 0) | ~noisy
    d1 = jnp.where(keep, d1_default, d1)
    d2 = jnp.where(keep, d2_default, d2)
    ones = jnp.ones_like(s)
    return lam * ones, d1 * ones, d2 * ones


def official_noise_coords(svd):
    """The official Lambda_noise's map P into spectral coordinates: V^T for inpainting and
    denoising, but the raw entries (V^T skipped, the spectral layout kept) for super-resolution,
    deblurring and colorization, for the official classes and the project's forms alike."""
    from jaxdiff.operators import official_svd as off
    from jaxdiff.operators import svd as forms

    if isinstance(svd, off.OfficialSuperResolution):

        def raw_patches(op_params, x):
            p = svd._patches(x)
            return jnp.concatenate([p[..., 0].reshape(-1), p[..., 1:].reshape(-1)])

        return raw_patches
    if isinstance(svd, off.OfficialDeblurring):

        def raw_sorted(op_params, x):
            c = x.shape[-1]
            return jnp.transpose(x, (2, 0, 1)).reshape(c, -1)[:, svd.perm].T.reshape(-1)

        return raw_sorted
    if isinstance(svd, off.OfficialColorization):  # channel k of pixel p at k H W + p, as Vt

        def raw_channels(op_params, x):
            return jnp.transpose(x, (2, 0, 1)).reshape(-1)

        return raw_channels
    if isinstance(svd, forms.SeparableSVD):

        def raw_separable(op_params, z):
            h, w = svd.hw
            return jnp.concatenate(
                [z[:h, :w].reshape(-1), z[h:].reshape(-1), z[:h, w:].reshape(-1)]
            )

        return raw_separable
    if isinstance(svd, forms.PixelSVD):
        return lambda op_params, x: jnp.concatenate([x[..., 0].reshape(-1), x[..., 1:].reshape(-1)])
    return svd.Vt
