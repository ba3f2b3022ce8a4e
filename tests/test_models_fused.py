"""The hand-written VJPs of jaxdiff/models/fused.py against JAX's autodiff of the plain ops.

Outputs must equal the plain ops' to float rounding (same expressions, fused by XLA either way),
and every cotangent (x, GroupNorm's affine, the scale-shift) must match autodiff to float
rounding; float64 is checked by finite differences.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdiff.models import build_model, fused


@contextlib.contextmanager
def plain_ops():
    """Trace with XLA's own transposes (the reference)."""
    old = fused.USE_CUSTOM_VJP
    fused.USE_CUSTOM_VJP = False
    try:
        yield
    finally:
        fused.USE_CUSTOM_VJP = old


def vjp_both(fn, *args):
    """(out, cotangents) with the custom VJPs and with the plain ops, for a random cotangent."""
    res = []
    for ctx in (contextlib.nullcontext(), plain_ops()):
        with ctx:  # jit: op-by-op dispatch of the VJPs costs more than compiling them

            def both(*args):
                out, pull = jax.vjp(fn, *args)
                g = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
                return out, pull(g)

            res.append(jax.jit(both)(*args))
    return res


def assert_tree_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "shape", [pytest.param((2, 8, 6, 5), marks=pytest.mark.slow), (1, 7, 5, 3)]
)
def test_avg_pool_and_upsample_match_plain(shape):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    (o1, g1), (o2, g2) = vjp_both(fused.avg_pool2x, x)
    np.testing.assert_allclose(o1, o2, rtol=1e-6, atol=1e-7)
    assert_tree_close(g1, g2, 0, 0)  # g / 4 spread over each window, zero on a dropped edge
    (o1, g1), (o2, g2) = vjp_both(fused.upsample_nearest2x, x)
    np.testing.assert_array_equal(o1, o2)
    assert_tree_close(g1, g2, 1e-6, 1e-6)


def test_avg_pool_sums_like_torch():
    """((x00 + x01) + x10) + x11, then / 4 (PyTorch's avg_pool2d order), exactly."""
    x = jax.random.normal(jax.random.key(1), (1, 4, 4, 2), jnp.float32)
    a = np.asarray(x)
    want = (((a[:, 0::2, 0::2] + a[:, 0::2, 1::2]) + a[:, 1::2, 0::2]) + a[:, 1::2, 1::2]) / 4
    np.testing.assert_array_equal(fused.avg_pool2x(x), want.astype(np.float32))


def _gn_args(dtype, mod: bool, key=0, shape=(2, 4, 3, 8)):
    ks = jax.random.split(jax.random.key(key), 5)
    x = 2 + 3 * jax.random.normal(ks[0], shape, dtype)
    gamma = 1 + 0.1 * jax.random.normal(ks[1], shape[-1:], jnp.float32)
    beta = 0.1 * jax.random.normal(ks[2], shape[-1:], jnp.float32)
    ss = None
    if mod:
        scale = 0.2 * jax.random.normal(ks[3], (shape[0], 1, 1, shape[-1]), dtype)
        shift = 0.2 * jax.random.normal(ks[4], (shape[0], 1, 1, shape[-1]), dtype)
        ss = (scale, shift)
    return x, gamma, beta, ss


@pytest.mark.parametrize(
    "mod,silu", [pytest.param(False, False, marks=pytest.mark.slow), (True, True)]
)
def test_group_norm_matches_autodiff_float32(mod, silu):
    x, gamma, beta, ss = _gn_args(jnp.float32, mod)

    def fn(x, gamma, beta, ss):
        return fused.group_norm(x, gamma, beta, ss, num_groups=4, silu=silu)

    (o1, g1), (o2, g2) = vjp_both(fn, x, gamma, beta, ss)
    np.testing.assert_allclose(o1, o2, rtol=1e-6, atol=1e-6)  # XLA may fuse either differently
    assert_tree_close(g1, g2, 2e-5, 2e-5)


@pytest.mark.slow
def test_group_norm_tokens_and_bfloat16():
    """(B, T, C) token input (attention blocks); bf16 compute with float32 statistics."""
    x, gamma, beta, _ = _gn_args(jnp.float32, False, shape=(2, 12, 8))
    (o1, g1), (o2, g2) = vjp_both(lambda x: fused.group_norm(x, gamma, beta, num_groups=2), x)
    np.testing.assert_allclose(o1, o2, rtol=1e-6, atol=1e-6)
    assert_tree_close(g1, g2, 2e-5, 2e-5)
    x, gamma, beta, ss = _gn_args(jnp.bfloat16, True)

    def fn(x):
        return fused.group_norm(x, gamma, beta, ss, 4, dtype=jnp.bfloat16, silu=True)

    (o1, g1), (o2, g2) = vjp_both(fn, x)
    assert o1.dtype == jnp.bfloat16 and g1[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(o1.astype(jnp.float32), o2.astype(jnp.float32), rtol=0.01, atol=0.01)
    # the custom VJP keeps the chain in float32; autodiff rounds each step to bf16
    assert_tree_close(jax.tree.map(lambda a: a.astype(jnp.float32), g1),
                      jax.tree.map(lambda a: a.astype(jnp.float32), g2), 0.05, 0.05)  # fmt: skip


def test_group_norm_finite_differences_float64():
    with jax.enable_x64(True):
        x, gamma, beta, ss = _gn_args(jnp.float64, True, shape=(1, 3, 2, 4))
        gamma, beta = gamma.astype(jnp.float64), beta.astype(jnp.float64)

        def fn(x, gamma, beta, scale, shift):
            return fused.group_norm(x, gamma, beta, (scale, shift), 2, dtype=jnp.float64, silu=True)

        check_grads(fn, (x, gamma, beta, *ss), order=1, modes=("rev",), atol=1e-7, rtol=1e-7)


# The fixture-sized ADM (resblock up/down, scale-shift, attention at two levels), at 16 px.
ADM_TINY = {
    "image_size": 16,
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 6,
    "num_res_blocks": 1,
    "attention_resolutions": (2, 4),
    "channel_mult": (1, 2, 2),
    "num_head_channels": 16,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
}


@pytest.mark.slow  # two compiles of the tiny ADM's VJP (~20 s idle)
def test_adm_gradients_match_plain_ops():
    """The whole tiny ADM (resblock up/down, scale-shift, attention): the output, its gradient
    w.r.t. x (what DPS needs) and w.r.t. the parameters (training) with and without the VJPs."""
    model = build_model("adm", ADM_TINY)
    s = ADM_TINY["image_size"]
    x = jax.random.normal(jax.random.key(3), (2, s, s, 3), jnp.float32)
    t = jnp.array([10, 900], jnp.int32)
    params = model.init(jax.random.key(4), x, t)["params"]
    params = jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(5), p.shape), params
    )

    def fn(p, x):
        return model.apply({"params": p}, x, t)

    (o1, g1), (o2, g2) = vjp_both(fn, params, x)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-5)
    assert_tree_close(g1[1], g2[1], 1e-4, 1e-4)
    assert_tree_close(g1[0], g2[0], 1e-3, 1e-3)


@pytest.mark.parametrize("k,pad", [(3, 1), (1, 0)])
def test_conv_vjp_matches_plain(k, pad):
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 4), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (k, k, 4, 3), jnp.float32)
    padding = ((pad, pad), (pad, pad))
    (o1, g1), (o2, g2) = vjp_both(lambda x, w: fused.conv2d(x, w, (1, 1), padding), x, w)
    np.testing.assert_allclose(o1, o2, rtol=1e-6, atol=1e-6)
    assert_tree_close(g1, g2, 1e-5, 1e-5)


def test_scanned_conv_gradient_uses_standard_kernel_layout():
    """The regression behind docs/performance.md: in a scan, XLA's own transpose is a convolution
    with the kernel's I/O swapped (dim_labels ..._01oi), which XLA:CPU runs on its slow loop
    emitter; with the custom VJP every convolution has the HWIO (01io) kernel layout."""
    x = jnp.zeros((1, 8, 8, 4), jnp.float32)
    w = jnp.zeros((3, 3, 4, 4), jnp.float32)

    def run(x, w):
        def body(c, _):
            y, pull = jax.vjp(lambda c: jnp.tanh(fused.conv2d(c, w, (1, 1), ((1, 1), (1, 1)))), c)
            return c - pull(y)[0], None

        return jax.lax.scan(body, x, None, length=2)[0]

    text = jax.jit(run).lower(x, w).compile().as_text()
    labels = [line.split("dim_labels=")[1].split(",")[0] for line in text.splitlines()
              if " convolution(" in line]  # fmt: skip
    assert len(labels) == 2 and all(lab == "b01f_01io->b01f" for lab in labels), labels


def test_input_gradient_under_vmap_keeps_one_kernel_and_each_image_apart():
    """vmap over images (the samplers' `batched`): the flipped kernel of the input gradient stays
    one kernel for the batch (a kernel per image made the convolution a grouped one, 3.2x the
    time per image at batch 4), and a non-finite cotangent in one image leaves the others'
    gradients as they are alone."""
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4), jnp.float32)
    xs = jax.random.normal(jax.random.key(0), (3, 1, 6, 6, 4), jnp.float32)
    scale = jnp.asarray([jnp.nan, 1.0, 2.0])

    def grad_one(x, s):
        return jax.grad(lambda x: s * jnp.sum(fused.conv2d(x, w, (1, 1), ((1, 1), (1, 1)))))(x)

    text = jax.jit(jax.vmap(grad_one)).lower(xs, scale).compile().as_text()
    convs = [line for line in text.splitlines() if " convolution(" in line]
    assert convs and not any("feature_group_count" in line for line in convs), convs
    got = jax.jit(jax.vmap(grad_one))(xs, scale)
    assert np.all(np.isnan(got[0]))
    for i in (1, 2):
        np.testing.assert_allclose(got[i], grad_one(xs[i], scale[i]), rtol=1e-6, atol=1e-6)
