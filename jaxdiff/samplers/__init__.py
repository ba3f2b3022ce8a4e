"""Samplers: a registry of factories, each returning a pure sample function for ONE image.

    make = get_sampler("dps")
    sample = make(model_fn, schedule, operator=op, noise=noise, scale=0.3)   # static options
    result = sample(params, key, y, op_params, hparams, replay=None)          # one image
    run = jax.jit(batched(sample))                                            # a batch
    results = run(params, keys, ys, op_params, {"scale": 0.5})
    raise_on_divergence(results)

`model_fn(params, x, t) -> out` on batched (B, H, W, C) / (B,) arrays; params are an argument,
never a closure constant. Hyperparameters are traced scalars, so `batched(sample, sweep=True)`
runs a whole sweep (a leading axis on every hparam) in one compiled call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import DivergenceError

# Importing a method module registers it (each file declares its needs, hparams and cost).
from jaxdiff.samplers import (  # noqa: F401
    daps,
    ddim,
    ddnm,
    ddpm,
    ddrm,
    diffpir,
    dmps,
    dps,
    dsg,
    fps_smc,
    latent_daps,
    latent_dps,
    mcg,
    mcg_diff,
    mmps,
    mpgd,
    pigdm,
    pnpdm,
    psld,
    reddiff,
    repaint,
    resample,
    score_ald,
    sdedit,
    tds,
    tmpd,
    tweedie,
)
from jaxdiff.samplers.base import SAMPLERS, LoopOptions, SamplerSpec, register_sampler
from jaxdiff.samplers.common import BATCH_AXIS, SampleResult


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler, called as the factory
    `make(model_fn, schedule, *, operator=None, noise=None, **hparam_defaults_and_options)`."""
    return SAMPLERS.get(name)


def batched(sample, *, sweep: bool = False, shared_op_params: bool = False):
    """vmap a one-image sample function over images (axis name "batch").

    Returns `f(params, keys, y, op_params=None, hparams=None, replay=None, valid=None)` with a
    leading batch axis on keys, y, replay and valid (and op_params unless `shared_op_params`).
    `valid` (bool per image, default all True) marks padding, which only batch-coupled DPS reads.
    With `sweep=True` every hparam carries a leading sweep axis and results gain a leading sweep
    axis (S, B, ...): the same images and keys under each setting, one compiled call.
    """

    def run(params, keys, y=None, op_params=None, hparams=None, replay=None, valid=None):
        if sweep and not jax.tree.leaves(hparams or {}):
            raise ValueError(
                "batched(sweep=True): give hparams as arrays with a leading sweep axis"
            )
        n = jnp.shape(keys)[0]
        if valid is None:
            valid = jnp.ones((n,), bool)
        op_axis = None if shared_op_params else 0
        inner = jax.vmap(sample, in_axes=(None, 0, 0, op_axis, None, 0, 0), axis_name=BATCH_AXIS)
        if sweep:
            inner = jax.vmap(inner, in_axes=(None, None, None, None, 0, None, None))
        return inner(params, keys, y, op_params, hparams or {}, replay, valid)

    return run


def raise_on_divergence(result: SampleResult, timestep_map=None) -> SampleResult:
    """Raise DivergenceError naming every image (and sweep entry) that went non-finite and the
    step; the error's `.result` keeps the other images' samples. Returns `result` when all are
    finite. `timestep_map` (schedule.timestep_map) adds the model timestep to the message."""
    diverged = np.asarray(jax.device_get(result.diverged_at))
    bad = np.argwhere(diverged >= 0)
    if bad.size == 0:
        return result
    parts = []
    for idx in bad:
        idx = tuple(int(i) for i in idx)
        step = int(diverged[idx])
        where = f"image {idx[-1]}" + (f" (sweep {idx[:-1]})" if len(idx) > 1 else "")
        detail = f"step {step}"
        if timestep_map is not None and 0 <= step < len(timestep_map):
            detail += f" (t={int(np.asarray(timestep_map)[::-1][step])})"
        parts.append(f"{where} at {detail}")
    err = DivergenceError(
        f"sampling produced NaN/Inf for {len(parts)} of {diverged.size} image(s): "
        + "; ".join(parts)
        + " (each was frozen at its last finite value; the others' results are in .result)"
    )
    err.images = [tuple(int(i) for i in idx) for idx in bad]
    err.steps = [int(diverged[tuple(idx)]) for idx in bad]
    err.result = result
    raise err


__all__ = [
    "SAMPLERS",
    "LoopOptions",
    "SamplerSpec",
    "register_sampler",
    "SampleResult",
    "batched",
    "get_sampler",
    "raise_on_divergence",
]
