"""Classical baselines: each beats its measurement on a real photo; bad input fails clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff.baselines import BASELINES, HOST_SIDE, tv_objective
from jaxdiff.metrics import psnr
from jaxdiff.operators import get_operator

SHAPE = (64, 64, 3)


@pytest.fixture(scope="module")
def image(request):
    """The astronaut photo at 64x64 (bicubic), float32 HWC in [-1, 1]."""
    path = request.config.rootpath / "tests" / "fixtures" / "metric_clean_astronaut.png"
    img = Image.open(path).convert("RGB").resize(SHAPE[:2], Image.BICUBIC)
    return jnp.asarray(np.asarray(img, np.float32) / 127.5 - 1.0)


def _psnr(x, ref):
    return float(psnr(ref[None], jnp.asarray(x)[None])[0])


def _measure(op, x, sigma, seed=0):
    params = op.sample(jax.random.key(seed))
    y = op.apply(params, x)
    return y + sigma * jax.random.normal(jax.random.key(seed + 1), y.shape), params


@pytest.fixture(scope="module")
def blur_op():
    return get_operator("gaussian_blur", image_shape=SHAPE, kernel_size=13, std=2.0)


@pytest.fixture(scope="module")
def box_op():
    return get_operator("inpaint_box", image_shape=SHAPE, mask_len_range=(16, 17), margin=(8, 8))


def test_registry():
    assert set(BASELINES.names()) == {
        "zero_fill",
        "adjoint",
        "least_squares",
        "tv_least_squares",
        "bicubic",
        "wiener",
        "telea",
        "navier_stokes",
    }
    assert HOST_SIDE <= set(BASELINES.names())
    with pytest.raises(KeyError, match="known: adjoint"):
        BASELINES.get("admm")


def test_wiener_deblurs(image, blur_op):
    y, params = _measure(blur_op, image, 0.01)
    wiener = jax.jit(lambda y, p: BASELINES.get("wiener")(y, blur_op, p, noise_sigma=0.01))
    x_hat = wiener(y, params)
    assert x_hat.shape == SHAPE
    assert _psnr(x_hat, image) > _psnr(y, image) + 2.0


def test_wiener_mirror_extension_models_reflect_padding(image, blur_op):
    """Noiseless, symmetric kernel: the mirrored FFT model is exact, the periodic one rings."""
    y, params = _measure(blur_op, image, 0.0)
    wiener = BASELINES.get("wiener")
    reflect = _psnr(wiener(y, blur_op, params, balance=1e-4), image)
    periodic = _psnr(wiener(y, blur_op, params, balance=1e-4, boundary="periodic"), image)
    assert reflect > periodic + 3.0
    assert reflect > _psnr(y, image) + 5.0


@pytest.mark.parametrize("name", ["telea", "navier_stokes"])
def test_opencv_inpainting_fills_the_hole(image, box_op, name):
    y, params = _measure(box_op, image, 0.0)
    x_hat = BASELINES.get(name)(y, box_op, params)
    hole = np.asarray(params["mask"]) < 0.5
    assert hole.sum() == 16 * 16 * 3
    np.testing.assert_array_equal(np.asarray(x_hat)[~hole], np.asarray(y)[~hole])
    ref = np.asarray(image)
    err_fill = np.abs(np.asarray(x_hat) - ref)[hole].mean()
    err_zero = np.abs(ref)[hole].mean()  # 0.54 here
    err_mean = np.abs(ref - ref[~hole].reshape(-1, 3).mean(0))[hole].mean()  # 0.49
    assert err_fill < 0.7 * min(err_zero, err_mean)  # 0.29 for both methods
    assert _psnr(x_hat, image) > _psnr(y, image) + 3.0


def test_least_squares_inpainting_keeps_the_known_pixels(image, box_op):
    y, params = _measure(box_op, image, 0.0)
    x_hat = np.asarray(BASELINES.get("least_squares")(y, box_op, params))
    keep = np.asarray(params["mask"]) > 0.5
    # ridge 1e-3 shrinks kept pixels by 1 / (1 + 1e-3); holes are the null space and stay 0
    np.testing.assert_allclose(x_hat[keep], np.asarray(image)[keep], atol=1.5e-3)
    np.testing.assert_allclose(x_hat[~keep], 0.0, atol=1e-6)


def test_least_squares_solves_super_resolution(image):
    """Noiseless x2 SR: the CG solution reproduces the measurement far better than bicubic does."""
    op = get_operator("super_resolution", image_shape=SHAPE, factor=2)
    y, params = _measure(op, image, 0.0)
    ls = BASELINES.get("least_squares")(y, op, params, ridge=1e-6, maxiter=50, clip=False)
    cubic = BASELINES.get("bicubic")(y, op, params)
    resid_ls = float(jnp.linalg.norm(op.apply(params, ls) - y))
    resid_cubic = float(jnp.linalg.norm(op.apply(params, cubic) - y))
    assert resid_ls < 0.05 * resid_cubic
    nearest = BASELINES.get("zero_fill")(y, op, params)
    assert _psnr(cubic, image) > _psnr(nearest, image) + 0.5
    assert _psnr(ls, image) > _psnr(nearest, image)


def test_tv_decreases_its_objective_and_deblurs(image, blur_op):
    y, params = _measure(blur_op, image, 0.05)
    tv = BASELINES.get("tv_least_squares")
    objective = [
        float(tv_objective(tv(y, blur_op, params, steps=n, clip=False), y, blur_op, params))
        for n in (0, 30, 150)
    ]
    assert objective[0] > objective[1] > objective[2]
    x_hat = tv(y, blur_op, params, steps=150)
    assert _psnr(x_hat, image) > _psnr(y, image) + 0.5


def test_tv_and_adjoint_on_random_inpainting_under_vmap(image):
    """Any linear operator, batched with vmap over per-image masks."""
    op = get_operator("inpaint_random", image_shape=SHAPE)
    keys = jax.random.split(jax.random.key(3), 2)
    params = jax.vmap(op.sample)(keys)
    xs = jnp.stack([image, image[::-1]])
    ys = jax.vmap(op.apply)(params, xs)

    def run(y, p):
        return BASELINES.get("tv_least_squares")(y, op, p, steps=100, learning_rate=0.02)

    x_hat = jax.vmap(run)(ys, params)
    floor = jax.vmap(lambda y, p: BASELINES.get("adjoint")(y, op, p))(ys, params)
    np.testing.assert_allclose(np.asarray(floor), np.asarray(ys), atol=1e-6)  # A^T y = mask * y
    for i in range(2):
        assert _psnr(x_hat[i], xs[i]) > _psnr(floor[i], xs[i]) + 5.0


def test_adjoint_baseline_is_the_transpose(image):
    op = get_operator("super_resolution", image_shape=SHAPE, factor=4)
    params = op.sample(jax.random.key(0))
    y = jax.random.normal(jax.random.key(1), op.output_shape())
    at_y = BASELINES.get("adjoint")(y, op, params, clip=False)
    np.testing.assert_allclose(
        float(jnp.vdot(op.apply(params, image), y)), float(jnp.vdot(image, at_y)), rtol=1e-5
    )


@pytest.mark.parametrize("name", ["least_squares", "tv_least_squares", "adjoint"])
def test_nonlinear_operator_is_refused(name):
    op = get_operator("phase_retrieval", image_shape=(16, 16, 1))
    y = jnp.zeros(op.output_shape())
    with pytest.raises(TypeError, match="phase_retrieval is nonlinear"):
        BASELINES.get(name)(y, op, {})


@pytest.mark.parametrize(
    "name, op_name, match",
    [
        ("wiener", "inpaint_box", "blur operators"),
        ("telea", "gaussian_blur", "inpainting operators"),
    ],
)
def test_wrong_task_is_refused(name, op_name, match, blur_op, box_op):
    op = {"inpaint_box": box_op, "gaussian_blur": blur_op}[op_name]
    params = op.sample(jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        BASELINES.get(name)(jnp.zeros(SHAPE), op, params)


def test_wrong_measurement_shape_is_refused(blur_op):
    params = blur_op.sample(jax.random.key(0))
    with pytest.raises(ValueError, match=r"y has shape \(32, 32, 3\)"):
        BASELINES.get("wiener")(jnp.zeros((32, 32, 3)), blur_op, params)
