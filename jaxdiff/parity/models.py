"""Replay of the model forward fixtures (`<model>_io.npz`, fixture README part (a)/(b)).

Each holds fixed inputs `x` (NCHW) and one timestep per image `t`, the torch UNet's output `out`
(float32) and `out_f64` (the same forward in float64), and for diffusers `out_t0_for_all` (one
0-d timestep broadcast to the batch, as DDPMPipeline passes it). The model `<model>` is converted
from beside the fixture (`<model>.pt` with `<model>.json` kwargs, or the diffusers folder
`<model>/`) unless `--model` names a converted folder. The tolerances are relative to the largest
output, as in tests/test_models_adm.py and tests/test_models_unet2d.py.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.parity.common import (
    NotAFixture,
    compare,
    load_model,
    model_anchor,
    nchw_to_nhwc,
    report,
    run_dtype,
)

SUFFIX = "_io.npz"
REL_F32 = 1e-5  # measured 4e-6 (adm_tiny) / 1.6e-6 (diffusers_tiny) of max |out|
# float64 vs torch float64: rounding (1e-14) for ADM; diffusers builds its sinusoid in float32
# even in a float64 model (embeddings.py), and so does jaxdiff: measured 8.3e-10 (abs).
REL_F64 = 1e-8


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    if not npz_path.name.endswith(SUFFIX):
        raise ValueError(f"{npz_path}: a model forward fixture is named <model>{SUFFIX}")
    name = npz_path.name[: -len(SUFFIX)]
    io = dict(np.load(npz_path))
    if not {"x", "t", "out"} <= set(io):
        raise NotAFixture(
            f"{npz_path.name} holds none of a UNet forward fixture's arrays (x, t, out): "
            f"its own test replays it"
        )
    jdtype, ctx = run_dtype(dtype)
    with ctx, jax.default_matmul_precision("highest"):
        fn, params, meta = load_model(model_anchor(npz_path, name), model_dir, name, jdtype)
        forward = jax.jit(fn)
        x, t = jnp.asarray(nchw_to_nhwc(io["x"]), jdtype), io["t"]
        arrays = {}
        want, rel = (io["out_f64"], REL_F64) if dtype == "float64" else (io["out"], REL_F32)
        key = "out_f64" if dtype == "float64" else "out"
        arrays[key] = _compare(forward(params, x, t), want, rel)
        if "out_t0_for_all" in io:  # a float32 reference whatever the replay dtype
            got = forward(params, x, np.full_like(t, t[0]))
            arrays["out_t0_for_all"] = _compare(got, io["out_t0_for_all"], REL_F32)
    return report(npz_path, "model", arrays, model=name, architecture=meta["architecture"])


def _compare(got, want_nchw, rel: float) -> dict:
    want = nchw_to_nhwc(want_nchw)
    return compare(np.asarray(got), want, atol=rel * float(np.abs(want).max()))
