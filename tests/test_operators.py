"""Operator and noise contract: adjoints, randomness, statistics, errors, noise likelihoods."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff.operators import OPERATORS, get_noise, get_operator

SHAPE = (32, 24, 3)
RNG = np.random.RandomState(0)
USER_MASK = (RNG.uniform(size=SHAPE[:2]) > 0.4).astype(np.float32)
USER_KERNEL = RNG.uniform(size=(5, 7)).astype(np.float32)  # not symmetric: orientation matters

LINEAR = {
    "denoise": {},
    "colorize": {},
    "colorize_bt601": {"weights": "bt601"},
    "inpaint": {"mask": USER_MASK},
    "inpaint_box": {"mask_len_range": (6, 11), "margin": (2, 2)},
    "inpaint_random": {},
    "gaussian_blur": {"kernel_size": 9, "std": 3.0},
    "motion_blur": {"kernel_size": 15, "intensity": 0.5},
    "blur": {"kernel": USER_KERNEL},
    "blur_direct": {"kernel": USER_KERNEL, "method": "direct"},
    "super_resolution": {"factor": 2},
    "super_resolution_x4": {"factor": 4},
    "super_resolution_avg_pool": {"factor": 4, "method": "avg_pool"},
}


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


@functools.cache
def _make(case: str):
    name = case.split("_x4")[0].replace("_bt601", "").replace("_direct", "")
    name = name.replace("_avg_pool", "")
    return get_operator(name, image_shape=SHAPE, **LINEAR[case])


N_DRAWS = {"inpaint_box": 1000, "inpaint_random": 1000, "motion_blur": 17}


@functools.cache
def _draws(case: str):
    """op_params for N keys, the last key a repeat of key 3: one compile per random operator."""
    keys = jax.random.split(jax.random.key(11), N_DRAWS[case])
    keys = keys.at[-1].set(keys[3])
    params = jax.jit(jax.vmap(_make(case).sample))(keys)
    return jax.tree.map(np.asarray, params)


def test_registry_names():
    assert set(OPERATORS.names()) == {
        "blur", "colorize", "denoise", "gaussian_blur", "high_dynamic_range", "inpaint",
        "inpaint_box", "inpaint_random", "motion_blur", "phase_retrieval", "super_resolution",
    }  # fmt: skip
    with pytest.raises(KeyError, match="known: blur"):
        get_operator("deblur", image_shape=SHAPE)


@pytest.mark.parametrize("case", sorted(LINEAR))
def test_adjoint_is_the_transpose(case):
    """<A x, y> = <x, A^T y> to float32 precision, and A^T is what the VJP of A computes."""
    op = _make(case)
    assert op.linear
    params = jax.tree.map(lambda a: a[0], _draws(case)) if case in N_DRAWS else op.sample(None)
    kx, ky = jax.random.split(jax.random.key(4))
    x = jax.random.normal(kx, SHAPE)
    y = jax.random.normal(ky, op.output_shape())

    @jax.jit
    def run(params, x, y):
        ax, vjp = jax.vjp(lambda v: op.apply(params, v), x)
        return ax, op.adjoint(params, y), vjp(y)[0]

    ax, aty, vjp_y = run(params, x, y)
    assert ax.shape == op.output_shape() and aty.shape == SHAPE
    lhs, rhs = float(jnp.vdot(ax, y)), float(jnp.vdot(x, aty))
    scale = float(jnp.linalg.norm(ax) * jnp.linalg.norm(y))
    assert abs(lhs - rhs) <= 1e-6 * scale, (lhs, rhs)
    np.testing.assert_allclose(vjp_y, aty, rtol=0, atol=1e-6)
    assert float(jnp.linalg.norm(aty)) > 0


def test_blur_is_reflect_padded_cross_correlation():
    """Brute-force check of A(x)[i, j] = sum k[u, v] xpad[i + u, j + v] (no flip, 'reflect')."""
    op = get_operator("blur", image_shape=SHAPE, kernel=USER_KERNEL)
    x = np.asarray(jax.random.normal(jax.random.key(0), SHAPE), np.float64)
    xp = np.pad(x, ((2, 2), (3, 3), (0, 0)), mode="reflect")
    want = np.zeros(SHAPE)
    for u in range(5):
        for v in range(7):
            want += USER_KERNEL[u, v] * xp[u : u + SHAPE[0], v : v + SHAPE[1]]
    for method in ("fft", "direct"):
        op = get_operator("blur", image_shape=SHAPE, kernel=USER_KERNEL, method=method)
        got = op.apply(op.sample(None), jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_colorize_and_avg_pool_values():
    x = jax.random.normal(jax.random.key(0), SHAPE)
    op = get_operator("colorize", image_shape=SHAPE, weights="bt601")
    np.testing.assert_allclose(
        op.apply({}, x)[..., 0],
        0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2],
        atol=1e-6,
    )
    op = get_operator("super_resolution", image_shape=SHAPE, factor=4, method="avg_pool")
    np.testing.assert_allclose(op.apply({}, x)[1, 2], x[4:8, 8:12].mean(axis=(0, 1)), atol=1e-6)


def test_phase_retrieval():
    op = get_operator("phase_retrieval", image_shape=(32, 32, 3), oversample=2.0)
    assert not op.linear and op.pad == (8, 8) and op.output_shape() == (48, 48, 3)
    x = jax.random.uniform(jax.random.key(0), (32, 32, 3), minval=-1, maxval=1)

    @jax.jit
    def run(x):
        return op.apply({}, x), jax.grad(lambda v: jnp.sum(op.apply({}, v)))(jnp.zeros_like(x))

    y, grad_at_zero = run(x)
    xp = np.pad(np.asarray(x, np.float64), ((8, 8), (8, 8), (0, 0)))
    spec = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(xp, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1)
    )
    np.testing.assert_allclose(y, np.abs(spec), atol=1e-5)
    np.testing.assert_allclose(np.sum(np.square(y)), np.sum(np.square(x)), rtol=1e-5)  # Parseval
    assert np.all(np.isfinite(grad_at_zero))
    with pytest.raises(TypeError, match="nonlinear"):
        op.adjoint({}, y)


@pytest.mark.parametrize("case", sorted(N_DRAWS))
def test_random_parameters_follow_the_key(case):
    """vmap over keys gives a different mask/kernel per key; the same key gives the same one."""
    field = "kernel" if case == "motion_blur" else "mask"
    batch = _draws(case)[field][:16]
    assert len({row.tobytes() for row in batch}) == 16
    np.testing.assert_array_equal(_draws(case)[field][-1], batch[3])
    if case == "motion_blur":
        np.testing.assert_allclose(batch.sum(axis=(1, 2)), 1.0, atol=1e-5)
        assert batch.min() >= 0


def test_box_mask_statistics():
    H, W, _ = SHAPE  # mask_len_range (6, 11), margin (2, 2)
    p = _draws("inpaint_box")
    top, left, h, w = p["box"].T
    assert set(h) == set(w) == set(range(6, 11))
    assert np.all((top >= 2) & (top < H - 2 - h) & (left >= 2) & (left < W - 2 - w))
    assert top.min() == 2 and left.min() == 2  # the low end is reachable ...
    assert np.any(top == H - 2 - h - 1) and np.any(left == W - 2 - w - 1)  # ... and the high end
    assert np.all(p["mask"] == p["mask"][..., :1])  # one mask for all channels
    holes = p["mask"][..., 0] == 0
    assert np.all(holes.sum(axis=(1, 2)) == h * w)
    i = 17
    assert np.all(holes[i, top[i] : top[i] + h[i], left[i] : left[i] + w[i]])


def test_random_mask_statistics():
    H, W, C = SHAPE
    p = _draws("inpaint_random")
    prob, mask = p["p"], p["mask"]
    zeros = (mask[..., 0] == 0).sum(axis=(1, 2))
    assert prob.dtype == np.float32 and np.all((prob >= 0.3) & (prob <= 0.7))
    np.testing.assert_array_equal(zeros, np.floor(prob * np.float32(H * W)))  # exactly int(HW p)
    assert np.all(mask == mask[..., :1])
    assert stats.kstest(prob[:-1], stats.uniform(0.3, 0.4).cdf).pvalue > 1e-3
    # every pixel is equally likely to be dropped
    per_pixel = (mask[..., 0] == 0).mean(axis=0)
    assert abs(per_pixel.mean() - 0.5) < 0.01 and per_pixel.std() < 0.05

    op = get_operator("inpaint_random", image_shape=SHAPE, per_channel=True)
    p = jax.jit(op.sample)(jax.random.key(5))
    mask = np.asarray(p["mask"])
    assert not np.all(mask == mask[..., :1])
    want = np.floor(np.asarray(p["p"]) * np.float32(H * W))
    np.testing.assert_array_equal((mask == 0).sum(axis=(0, 1)), [want] * C)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="not divisible by factor 4"):
        get_operator("super_resolution", image_shape=(250, 256, 3), factor=4, method="avg_pool")
    # the Resizer's output is ceil(H / f) (DPS util/resizer.py), as its tables give it
    odd = get_operator("super_resolution", image_shape=(32, 31, 3), factor=3)
    assert odd.output_shape() == (11, 11, 3)
    assert odd.apply(None, jnp.ones((32, 31, 3))).shape == (11, 11, 3)
    with pytest.raises(ValueError, match="too large for the 32x24 image"):
        get_operator("gaussian_blur", image_shape=SHAPE, kernel_size=61)  # pad 30 >= 24
    with pytest.raises(ValueError, match="padding 16x16"):
        get_operator("blur", image_shape=(16, 16, 3), kernel=np.ones((33, 33)))
    with pytest.raises(ValueError, match="odd"):
        get_operator("blur", image_shape=SHAPE, kernel=np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"mask has shape \(32, 32\)"):
        get_operator("inpaint", image_shape=SHAPE, mask=np.ones((32, 32)))
    with pytest.raises(ValueError, match="does not fit"):
        get_operator("inpaint_box", image_shape=(256, 256, 3), mask_len_range=(128, 230))
    with pytest.raises(ValueError, match="image_shape"):
        get_operator("denoise", image_shape=(32, 32))
    with pytest.raises(ValueError, match="3 channels"):
        get_operator("colorize", image_shape=SHAPE, weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="kernel size <= 106"):
        get_operator("motion_blur", image_shape=(256, 256, 3), kernel_size=121)

    op = get_operator("inpaint", image_shape=SHAPE, mask=USER_MASK)
    with pytest.raises(ValueError, match=r"input has shape \(24, 32, 3\)"):
        op.apply(op.sample(None), jnp.zeros((24, 32, 3)))
    with pytest.raises(ValueError, match=r"op_params\['mask'\] has shape \(32, 24, 1\)"):
        op.apply({"mask": jnp.ones((32, 24, 1))}, jnp.zeros(SHAPE))
    with pytest.raises(ValueError, match="needs a 'kernel' entry"):
        get_operator("motion_blur", image_shape=SHAPE, kernel_size=15).apply({}, jnp.zeros(SHAPE))
    sr = get_operator("super_resolution", image_shape=SHAPE, factor=2)
    with pytest.raises(ValueError, match=r"expected \(16, 12, 3\)"):
        sr.adjoint({}, jnp.zeros(SHAPE))


# --- noise ---------------------------------------------------------------------------------------
def test_gaussian_noise():
    noise = get_noise("gaussian", sigma=0.05)
    ax = jnp.linspace(-1, 1, 64 * 64 * 3).reshape(64, 64, 3)

    @jax.jit
    def run(keys):
        ys = jax.vmap(noise.sample, (0, None))(keys, ax)
        return ys, noise.log_likelihood(ys[0], ax)

    ys, loglik = run(jax.random.split(jax.random.key(0), 2))
    r = np.asarray(ys[0] - ax)
    assert abs(r.std() - 0.05) < 0.002 and abs(r.mean()) < 0.002
    assert not np.array_equal(ys[0], ys[1])
    want = stats.norm.logpdf(np.asarray(ys[0], np.float64), np.asarray(ax, np.float64), 0.05)
    np.testing.assert_allclose(float(loglik), want.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        get_noise("gaussian", sigma=0.0)


def test_poisson_noise():
    noise = get_noise("poisson", rate=1.0)
    ax = jnp.tile(jnp.linspace(-1.2, 1.2, 97)[:, None, None], (1, 50, 3))

    @jax.jit
    def run(key):
        y = noise.sample(key, ax)
        loglik, grad = jax.value_and_grad(lambda a: noise.log_likelihood(y, a))(ax)
        return y, loglik, grad

    y, loglik, grad = run(jax.random.key(0))
    counts = (np.asarray(y, np.float64) + 1) / 2 * 255
    assert y.min() >= -1 and y.max() <= 1
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # on the 2k/255 - 1 grid
    lam = np.clip((np.asarray(ax, np.float64) + 1) / 2, 0, 1) * 255
    inner = (lam > 20) & (lam < 200)
    assert abs(counts[inner].mean() - lam[inner].mean()) < 0.5  # unbiased inside the range
    k = np.round(counts)
    want = np.where(k >= 255, stats.poisson.logsf(254, lam), stats.poisson.logpmf(k, lam)).sum()
    np.testing.assert_allclose(float(loglik), want, rtol=1e-5)
    assert np.all(np.isfinite(grad))


def test_clean_noise():
    noise = get_noise("clean")
    ax = jnp.ones((4, 4, 3))
    assert noise.sample(jax.random.key(0), ax) is ax
    with pytest.raises(NotImplementedError, match="no density"):
        noise.log_likelihood(ax, ax)
    with pytest.raises(KeyError, match="known: clean, gaussian, poisson"):
        get_noise("speckle")


def test_a_kernel_wider_than_the_image_blurs_as_reflection_pad():
    """ReflectionPad2d(k // 2) only needs k // 2 < side: a 61-tap kernel on a 32 px image (DPS's
    motion blur on a small image). Every blur path agrees with numpy's reflect pad + correlate."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 3))
    k = rng.random((61, 61))
    k /= k.sum()
    xp = np.pad(x, ((30, 30), (30, 30), (0, 0)), mode="reflect")
    win = np.lib.stride_tricks.sliding_window_view(xp, (61, 61), axis=(0, 1))
    want = np.einsum("ijcuv,uv->ijc", win, k)
    with jax.default_matmul_precision("highest"), jax.enable_x64(True):
        for method in ("direct", "fft"):
            op = get_operator("blur", image_shape=x.shape, kernel=k, method=method)
            got = np.asarray(op.apply(op.sample(None), jnp.asarray(x)))
            np.testing.assert_allclose(got, want, atol=1e-8, err_msg=method)
        g = get_operator("gaussian_blur", image_shape=x.shape, kernel_size=61, std=3.0)
        kg = np.asarray(g.sample(None)["kernel"], np.float64)
        winner = np.einsum("ijcuv,uv->ijc", win, kg)
        np.testing.assert_allclose(np.asarray(g.apply(g.sample(None), jnp.asarray(x))), winner,
                                   atol=1e-6)  # fmt: skip
