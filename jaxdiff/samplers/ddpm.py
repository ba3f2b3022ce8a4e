"""DDPM ancestral sampling (REFERENCE 1.5): fixed small/large or learned(-range) variance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.common import (
    SampleResult,
    ancestral,
    p_mean_variance,
    resolve_hparams,
    resolve_image_shape,
)
from jaxdiff.samplers.loop import run_chain


def make_ddpm(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    image_shape=None,
    clip_denoised: bool = True,
    dtype=jnp.float32,
    keep_trajectory: bool = False,
    snapshot_every: int = 0,
    progress_every: int = 0,
):
    """Unconditional ancestral sampling over the whole (respaced) schedule.

    `sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True)`;
    y / op_params are ignored. `replay={"x_T": (H,W,C), "noise": (K,H,W,C)}` feeds recorded
    draws (noise[i] is used in sampling step i; the last step's draw is multiplied by zero).
    """
    del noise
    shape = resolve_image_shape(image_shape, operator, None, "ddpm")
    steps = np.arange(schedule.num_steps)[::-1]

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del y, op_params, valid
        resolve_hparams({}, hparams, "ddpm")
        replay = replay or {}
        k_init, k_loop = jax.random.split(key)
        x_T = replay.get("x_T")
        if x_T is None:
            x_T = jax.random.normal(k_init, shape, dtype)
        elif tuple(jnp.shape(x_T)) != shape:
            raise ValueError(f"ddpm: replay x_T has shape {jnp.shape(x_T)}, expected {shape}")
        x_T = jnp.asarray(x_T, dtype)

        def step(x, k, z, state):
            pmv = p_mean_variance(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
            record = {"x0_hat": pmv["x0"], "eps": pmv["eps"], "log_variance": pmv["log_variance"]}
            return ancestral(pmv, k, z), state, record

        out = run_chain(
            step,
            x_T,
            steps,
            key=k_loop,
            noise=replay.get("noise"),
            keep_trajectory=keep_trajectory,
            snapshot_every=snapshot_every,
            progress_every=progress_every,
            label="ddpm",
        )
        return SampleResult(out.x, out.diverged_at, out.snapshots, out.trajectory)

    return sample
