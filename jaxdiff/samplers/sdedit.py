"""SDEdit (Meng et al. 2022): noise a measurement-derived guide image to t0, run the reverse chain.

t0 is a traced hyperparameter (a fraction of the training steps, SDEdit's `--t`/1000), so a sweep
over t0 is one compiled call. How: the scan always covers the respaced steps up to the static
bound `max_t0` (default 1.0), and a step is applied only where k <= k0(t0); the start x is the
guide noised to level k0 (gathered with a traced index). The cost is therefore that of `max_t0`
whatever t0 is; set `max_t0` to the largest t0 you sweep to save the steps above it.

Start level: original index t0*T - 1 (SDEdit noises with abar_{t0-1} and runs i = t0-1 .. 0),
mapped to the last respaced step at or below it. The reverse step uses the schedule's variance
type and, like the SDEdit code, no clipping of x0_hat by default. Optional: `mask(op_params)`
(1 = keep) for the masked variant, `repeats` (SDEdit's `--sample_step`, default there 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import gaussian
from jaxdiff.samplers.base import chain, register_sampler
from jaxdiff.samplers.common import (
    SampleResult,
    ancestral,
    make_guide,
    p_mean_variance,
    resolve_hparams,
    resolve_image_shape,
)


def _sdedit_nfe(num_steps: int, options: dict) -> int:
    """The scan covers the steps up to max_t0 (whatever t0 is), once per repeat."""
    frac = float(options.get("max_t0", 1.0))
    return int(np.ceil(frac * num_steps)) * int(options.get("repeats", 1))


@register_sampler(
    "sdedit",
    needs=("guide", "measurement"),
    hparams={"t0": 0.5},
    ranges={"t0": "(0, 1]"},
    nfe=_sdedit_nfe,
    bounds={"t0": "max_t0"},
)
def make_sdedit(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    guide=None,
    max_t0: float = 1.0,
    repeats: int = 1,
    mask=None,
    clip_denoised: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params=None, hparams={"t0": ...}, replay=None)`.

    replay: {"e": (H,W,C) the draw that noises the guide, "noise": (n,H,W,C) per-step draws for
    the n = k_max+1 scanned steps, sampling order} (one repeat only).
    """
    del noise
    shape = resolve_image_shape(image_shape, operator, None, "sdedit")
    guide_fn = make_guide(guide, shape, "sdedit")
    if not 0.0 < float(max_t0) <= 1.0:
        raise ValueError(f"sdedit: max_t0 must be in (0, 1], got {max_t0}")
    if int(repeats) < 1:
        raise ValueError(f"sdedit: repeats must be >= 1, got {repeats}")
    tmap = schedule.timestep_map
    t_train = schedule.num_train_timesteps
    k_max = max(int(np.searchsorted(tmap, round(max_t0 * t_train) - 1, side="right")) - 1, 0)
    steps = np.arange(k_max + 1)[::-1]

    def start_index(t0_frac):
        t_start = jnp.round(t0_frac * t_train).astype(jnp.int32) - 1
        k0 = jnp.searchsorted(jnp.asarray(tmap, jnp.int32), t_start, side="right") - 1
        return jnp.clip(k0, 0, k_max)

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "sdedit")
        replay = replay or {}
        if repeats > 1 and replay:
            raise ValueError("sdedit: replay supports repeats=1 only")
        k0 = start_index(h["t0"])
        x0 = jnp.asarray(guide_fn(op_params, y), dtype)
        keep = None if mask is None else jnp.broadcast_to(mask(op_params), shape).astype(dtype)
        snaps, traj, diverged = [], [], jnp.asarray(-1, jnp.int32)
        for r in range(int(repeats)):
            k_e, k_loop = jax.random.split(jax.random.fold_in(key, r))
            e = replay.get("e")
            e = jax.random.normal(k_e, shape, dtype) if e is None else jnp.asarray(e, dtype)
            x_init = gaussian.q_sample(schedule.gather(k0, dtype), x0, e)

            def step(x, k, z, state, x0=x0, e=e):
                pmv = p_mean_variance(model_fn, params, schedule, x, k, clip_denoised=clip_denoised)
                x_new = ancestral(pmv, k, z)
                if keep is not None:
                    known = gaussian.q_sample(schedule.gather(k, dtype), x0, e)
                    x_new = keep * known + (1 - keep) * x_new
                x_new = jnp.where(k <= k0, x_new, x)
                return x_new, state, {"x0_hat": pmv["x0"]}

            out = chain(step, x_init, steps, key=k_loop, replay=replay, loop=loop, label="sdedit")
            x0 = out.x0 if keep is None else keep * x0 + (1 - keep) * out.x0
            shifted = jnp.where(out.diverged_at >= 0, out.diverged_at + r * len(steps), -1)
            diverged = jnp.where(diverged >= 0, diverged, shifted)
            snaps.append(out.snapshots)
            traj.append(out.trajectory)
        snap = None if snaps[0] is None else jnp.concatenate(snaps)
        traj = None if traj[0] is None else jax.tree.map(lambda *a: jnp.concatenate(a), *traj)
        return SampleResult(x0, diverged, snap, traj)

    return sample
