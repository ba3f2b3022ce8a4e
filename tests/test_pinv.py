"""jaxdiff.operators.pinv against a dense Moore-Penrose pseudo-inverse on small images: the SVD
closed form and matrix-free CG on the normal equations, with y outside range(A)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.operators import get_operator
from jaxdiff.operators.pinv import make_pinv, make_tikhonov

SHAPE = (8, 8, 2)


def dense(op, op_params):
    d = int(np.prod(SHAPE))
    jac = jax.jit(jax.jacobian(lambda v: op.apply(op_params, v.reshape(SHAPE)).ravel()))(
        jnp.zeros(d)
    )
    return np.asarray(jac, np.float64)


def check(op, method, atol, maxiter=200):
    p = op.sample(jax.random.key(0))
    a = dense(op, p)
    y_shape = op.output_shape()
    # a generic y: A x plus noise everywhere (also outside range(A), e.g. in inpainting holes)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, SHAPE)
    y = a @ x.ravel() + 0.1 * rng.normal(size=a.shape[0])
    want = np.linalg.pinv(a, rcond=1e-6) @ y
    with jax.default_matmul_precision("highest"):
        pinv = jax.jit(make_pinv(op, method=method, maxiter=maxiter))
        got = np.asarray(pinv(p, jnp.asarray(y.reshape(y_shape), jnp.float32)), np.float64)
    assert got.shape == SHAPE
    err = np.abs(got.ravel() - want).max()
    assert err < atol, (method, err)
    return got


@pytest.mark.parametrize("method", ["svd", "cg"])
def test_inpainting_pinv_zeroes_the_holes(method):
    """y = mask * x + noise everywhere; A^+ y = mask * y (noise in the holes dropped)."""
    mask = (np.random.default_rng(1).uniform(size=SHAPE[:2]) < 0.5).astype(np.float32)
    op = get_operator("inpaint", image_shape=SHAPE, mask=mask)
    check(op, method, atol=2e-6)


@pytest.mark.parametrize("method", ["svd", pytest.param("cg", marks=pytest.mark.slow)])
def test_super_resolution_pinv(method):
    op = get_operator("super_resolution", image_shape=SHAPE, factor=2)
    check(op, method, atol=5e-5)


@pytest.mark.slow
def test_non_separable_blur_uses_cg():
    """A non-separable 3x3 kernel (reflect padding) has no SVD form: auto -> CG, which reaches
    the dense pseudo-inverse to 1e-4 (condition number ~5 here)."""
    k = np.array([[0.0, 0.1, 0.05], [0.1, 0.5, 0.1], [0.05, 0.1, 0.0]], np.float32)
    op = get_operator("blur", image_shape=SHAPE, kernel=k)
    assert getattr(op, "svd", None) is None
    check(op, "auto", atol=1e-4)
    with pytest.raises(ValueError, match="has none"):
        make_pinv(op, method="svd")


@pytest.mark.slow
def test_vmaps_over_images_and_masks():
    """Per-image masks (op_params batched) under vmap, both methods."""
    masks = np.random.default_rng(2).uniform(size=(3, *SHAPE)) < 0.5
    op = get_operator("inpaint", image_shape=SHAPE, mask=masks[0])
    params = {"mask": jnp.asarray(masks, jnp.float32)}
    y = jax.random.normal(jax.random.key(3), (3, *SHAPE))
    for method in ("svd", "cg"):
        got = jax.jit(jax.vmap(make_pinv(op, method=method)))(params, y)
        np.testing.assert_allclose(got, params["mask"] * y, atol=1e-6)


def test_bad_operators_are_clear_errors():
    with pytest.raises(ValueError, match="nonlinear"):
        make_pinv(get_operator("phase_retrieval", image_shape=SHAPE))
    with pytest.raises(ValueError, match="unknown method"):
        make_pinv(get_operator("denoise", image_shape=SHAPE), method="fft")
    with pytest.raises(ValueError, match="needs an Operator"):
        make_pinv(lambda x: x)


@pytest.mark.parametrize(
    "name, method",
    [
        ("super_resolution", "svd"),
        pytest.param("super_resolution", "cg", marks=pytest.mark.slow),
        pytest.param("blur", "cg", marks=pytest.mark.slow),
    ],
)
def test_tikhonov_solve_matches_the_dense_formula(name, method):
    """(A^T A + lam I)^-1 A^T r, PiGDM's noisy guidance, for a traced lam (lam = 0: A^+ r)."""
    if name == "blur":
        k = np.array([[0.0, 0.1, 0.05], [0.1, 0.5, 0.1], [0.05, 0.1, 0.0]], np.float32)
        op = get_operator("blur", image_shape=SHAPE, kernel=k)
    else:
        op = get_operator(name, image_shape=SHAPE, factor=2)
    p = op.sample(jax.random.key(0))
    a = dense(op, p)
    r = np.random.default_rng(4).normal(size=a.shape[0])
    solve = jax.jit(make_tikhonov(op, method=method, maxiter=300))
    for lam in (0.0, 0.01, 0.5):
        want = np.linalg.pinv(a.T @ a + lam * np.eye(a.shape[1]), rcond=1e-6) @ a.T @ r
        with jax.default_matmul_precision("highest"):
            got = solve(p, jnp.asarray(r.reshape(op.output_shape()), jnp.float32), lam)
        assert np.abs(np.asarray(got, np.float64).ravel() - want).max() < 1e-4, (lam, method)
