"""Block rematerialisation (jaxdiff/models/remat.py) changes memory, never a number: the ADM and
the diffusers UNet under `remat="blocks"` take the same parameters and give the same outputs and
gradients (input and parameters) as `remat="none"`, and their compiled gradient holds less
temporary memory. The custom-VJP switch (models/fused.py) chooses per backend unless forced."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.benchmark import TINY
from jaxdiff.models import build_model, fused

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
ARCHS = {
    "adm": TINY,
    "unet2d": json.loads((FIXTURES / "diffusers_tiny" / "config.json").read_text()),
}


def random_params(model, x, t):
    """Random weights everywhere (zero-initialised output layers would hide every gradient),
    drawn for the shapes init would give without running init (op by op it costs ~10 s)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
    leaves, tree = jax.tree.flatten(shapes)
    rng = np.random.default_rng(1)  # numpy: one jax.random call per shape compiles per shape
    scale = [0.05 if len(p.shape) < 2 else 1 / np.sqrt(np.prod(p.shape[:-1])) for p in leaves]
    noisy = [(s * rng.standard_normal(p.shape)).astype(p.dtype) for p, s in zip(leaves, scale)]
    return jax.tree.unflatten(tree, [jnp.asarray(a) for a in noisy])


@pytest.mark.slow  # ~40 s per network: gradients w.r.t. every parameter, compiled twice
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_block_remat_changes_no_number(arch):
    config = ARCHS[arch]
    size = config.get("image_size") or config["sample_size"]
    plain, remat = build_model(arch, config), build_model(arch, config, remat="blocks")
    x = jax.random.normal(jax.random.key(2), (2, size, size, config["in_channels"]))
    t = jnp.array([10, 700])
    params = random_params(plain, x, t)
    assert jax.tree.structure(remat.init(jax.random.key(0), x, t)["params"]) == jax.tree.structure(
        params
    )

    def loss(model):
        return lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x, t)))

    with jax.default_matmul_precision("highest"):
        (v0, g0) = jax.jit(jax.value_and_grad(loss(plain), (0, 1)))(params, x)
        (v1, g1) = jax.jit(jax.value_and_grad(loss(remat), (0, 1)))(params, x)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    # every gradient equal to float rounding at the scale of the parameter gradients (a conv
    # bias that a per-channel GroupNorm cancels has a gradient of pure rounding noise)
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0[0]))
    for a, b in zip(jax.tree.leaves(g0[0]), jax.tree.leaves(g1[0]), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(g1[1], g0[1], rtol=0, atol=1e-5 * float(jnp.abs(g0[1]).max()))


@pytest.mark.slow
def test_block_remat_changes_no_input_gradient():
    """The default run's check: the input gradient (what DPS takes) and the output of the ADM
    under remat="blocks" equal remat="none"'s to float rounding, with the same parameters."""
    config = {**TINY, "image_size": 16}
    x = jax.random.normal(jax.random.key(2), (1, 16, 16, 3))
    t = jnp.array([500])
    plain, remat = build_model("adm", config), build_model("adm", config, remat="blocks")
    params = random_params(plain, x, t)

    def grad(model):
        return jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(model.apply({"params": params}, x, t)))))

    g0, g1 = grad(plain)(x), grad(remat)(x)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-5 * float(jnp.abs(g0).max()))
    assert float(jnp.abs(g0).max()) > 0


@pytest.mark.slow  # ~17 s: two compiles of a 64 px gradient
def test_block_remat_holds_less_memory_in_the_gradient():
    """A 64 px ADM without attention at full resolution (so convolution activations dominate,
    as in the full-size presets): the compiled input gradient's temporary memory drops."""
    config = {**TINY, "image_size": 64, "attention_resolutions": (4,)}
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    t = jnp.full((1,), 500)
    temp = {}
    for mode in ("none", "blocks"):
        model = build_model("adm", config, remat=mode)
        params = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]

        def grad(p, x, model=model):
            return jax.grad(lambda x: jnp.sum(model.apply({"params": p}, x, t)))(x)

        compiled = jax.jit(grad).lower(params, x).compile()
        temp[mode] = compiled.memory_analysis().temp_size_in_bytes
    assert temp["blocks"] < 0.85 * temp["none"], temp


def test_remat_modes_are_checked():
    with pytest.raises(ValueError, match="remat='block'"):
        build_model("adm", TINY, remat="block")
    with pytest.raises(ValueError, match="only the adm, unet2d"):
        build_model("clip_text", {}, remat="blocks")


def test_custom_vjps_are_chosen_per_backend_unless_forced(monkeypatch):
    monkeypatch.setattr(fused, "USE_CUSTOM_VJP", None)
    monkeypatch.delenv(fused.CUSTOM_VJP_ENV, raising=False)
    assert fused.custom_vjp_enabled() is (jax.default_backend() == "cpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert fused.custom_vjp_enabled() is False  # XLA's own transposes off the CPU
    monkeypatch.setenv(fused.CUSTOM_VJP_ENV, "on")
    assert fused.custom_vjp_enabled() is True
    monkeypatch.setenv(fused.CUSTOM_VJP_ENV, "off")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert fused.custom_vjp_enabled() is False
    monkeypatch.setenv(fused.CUSTOM_VJP_ENV, "maybe")
    with pytest.raises(ValueError, match="JAXDIFF_CUSTOM_VJP='maybe'"):
        fused.custom_vjp_enabled()
    monkeypatch.setattr(fused, "USE_CUSTOM_VJP", True)  # the module switch wins
    assert fused.custom_vjp_enabled() is True
