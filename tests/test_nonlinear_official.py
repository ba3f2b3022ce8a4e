"""The nonlinear operators against the official DPS / DAPS classes (tests/fixtures/nonlinear_ops:
A(x) and the VJP of a recorded cotangent, README rule atol 1e-5 x max(1, max|ref|))."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxdiff.operators import get_operator

HERE = pathlib.Path(__file__).parent / "fixtures" / "nonlinear_ops"
SIDECAR = json.loads((HERE / "nonlinear_ops.json").read_text())
ARRAYS = np.load(HERE / "nonlinear_ops.npz")


def _operator(name: str, settings: dict, image_shape):
    """The jaxdiff operator with the official settings of `name` (read from the sidecar)."""
    if "phase_retrieval" in name:
        daps = name.startswith("daps")
        return get_operator(
            "phase_retrieval",
            image_shape=image_shape,
            oversample=settings["oversample"],
            pad_reference=settings.get("resolution", 256),  # DPS hard-codes 256
            unit_input=daps,
        )
    return get_operator("high_dynamic_range", image_shape=image_shape, scale=settings["scale"])


def _close(got, ref, what):
    ref = np.asarray(ref)
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(np.asarray(got) - ref).max())
    assert err <= tol, f"{what}: max |err| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("name", sorted(SIDECAR["operators"]))
def test_operator_and_its_gradient_match_the_official_class(name):
    entry = SIDECAR["operators"][name]
    x = np.moveaxis(ARRAYS["x"], 1, -1)  # NCHW -> NHWC
    op = _operator(name, entry["settings"], x.shape[1:])
    ref_y = np.moveaxis(ARRAYS[f"{name}_Ax"], 1, -1)
    assert (x.shape[0], *op.output_shape()) == ref_y.shape
    c = np.moveaxis(ARRAYS[f"{name}_cotangent"], 1, -1)
    with jax.default_matmul_precision("highest"):
        y, pullback = jax.vjp(jax.vmap(lambda v: op.apply({}, v)), x)
        (g,) = pullback(c)
    _close(y, ref_y, f"{name} A(x)")
    _close(g, np.moveaxis(ARRAYS[f"{name}_vjp"], 1, -1), f"{name} VJP")


def test_hdr_saturates_and_refuses_a_bad_scale():
    op = get_operator("high_dynamic_range", image_shape=(4, 4, 3), scale=2.0)
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(4, 4, 3)
    y = np.asarray(op.apply({}, x))
    np.testing.assert_allclose(y, np.clip(2 * x, -1, 1))
    g = np.asarray(jax.grad(lambda v: op.apply({}, v).sum())(x))
    np.testing.assert_array_equal(g, np.where(np.abs(2 * x) <= 1, 2.0, 0.0))
    assert not op.linear
    with pytest.raises(ValueError, match="scale must be > 0"):
        get_operator("high_dynamic_range", image_shape=(4, 4, 3), scale=0)
    with pytest.raises(ValueError, match="pad_reference must be >= 1"):
        get_operator("phase_retrieval", image_shape=(4, 4, 3), pad_reference=0)


@pytest.mark.parametrize(
    "official, op_cfg, side",
    [
        ("dps", {"name": "phase_retrieval", "oversample": 2.0}, 160),  # 256-based pad: 64
        ("daps", {"name": "phase_retrieval", "oversample": 2.0}, 160),  # resolution default 256
        ("daps", {"name": "phase_retrieval", "oversample": 2.0, "resolution": 32}, 48),
        ("daps", {"name": "high_dynamic_range", "scale": 2}, 32),
    ],
)
def test_replays_build_the_nonlinear_tasks_from_the_operator_config(official, op_cfg, side):
    """A DPS / DAPS trajectory fixture on phase retrieval or HDR (the official task configs)
    replays with the official operator, read from its config alone."""
    from jaxdiff.parity.dps import build_operator

    op = build_operator({}, op_cfg, (32, 32, 3), official=official)
    assert op.output_shape() == (side, side, 3) and not op.linear
    ref = SIDECAR["operators"]
    name = {
        (160, "dps"): "dps_phase_retrieval",
        (160, "daps"): "daps_phase_retrieval_r256",
        (48, "daps"): "daps_phase_retrieval_r32",
        (32, "daps"): "daps_hdr_s2",
    }[side, official]
    x = np.moveaxis(ARRAYS["x"], 1, -1)[0]
    _close(op.apply({}, x), np.moveaxis(ARRAYS[f"{name}_Ax"], 1, -1)[0], name)
    assert ref[name]["y_shape"][-1] == side


def test_reddiff_replays_take_the_denoising_and_colourisation_degradations():
    """RED-diff / PiGDM fixtures on the repo's `deno` and `color` degradations build the official
    H_functions (the grey row 0.3333, 0.3334, 0.3333; identity), whose H H_pinv is the identity."""
    from jaxdiff.parity.operators import reddiff_operator

    class NoArrays(dict):
        path = "fixture.npz"

    x = np.random.RandomState(0).normal(size=(8, 8, 3)).astype(np.float32)
    op, params, _ = reddiff_operator(NoArrays(), "color", (8, 8, 3), 1)
    y = np.asarray(op.svd.H(params, x))
    np.testing.assert_allclose(y.reshape(8, 8), x @ [0.3333, 0.3334, 0.3333], atol=1e-6)
    np.testing.assert_allclose(op.svd.H(params, op.svd.H_pinv(params, y)), y, atol=1e-6)
    op, params, _ = reddiff_operator(NoArrays(), "deno", (8, 8, 3), 1)
    flat_chw = np.moveaxis(x, -1, 0).reshape(-1)  # the official vectors are C, H, W flattened
    np.testing.assert_allclose(np.asarray(op.svd.H(params, x)).reshape(-1), flat_chw, atol=1e-7)
    with pytest.raises(ValueError, match="no official RED-diff operator for deg 'jpeg10'"):
        reddiff_operator(NoArrays(), "jpeg10", (8, 8, 3), 1)
