"""RePaint, inpainting by resampling with jumps (Lugmayr et al., CVPR 2022; official code
andreas128/RePaint guided_diffusion/gaussian_diffusion.py `p_sample_loop_progressive`,
`p_sample`, `undo`; docs/methods.md).

The chain walks RePaint's resampling grid (`time_grids.repaint_walk`, the official
`get_schedule_jump`) over respaced steps, one scan step per pair (t, t'), with m the mask
(A(1) of the pixel-mask operator) and y the measurement:

    t' = t - 1 (model step at t):
        x_in = m (sqrt(abar_t) y + sqrt(1 - abar_t) z_known) + (1 - m) x     (not at the first)
        x    = mean(x_in, t) + 1[t > 0] exp(logvar / 2) z                    (p_sample)
    t' = t + 1 (forward step, no model):
        x    = sqrt(1 - beta_{t+1}) x + sqrt(beta_{t+1}) z                   (undo)

Two draws per pair ({"z", "known"}; a forward pair reads z only, the first pair neither's
known). The blend happens before each model step at the level of its input, as in the code
(the paper blends after each step at the level of its output: the same chain).

`official=True` returns the last model step's output, as the code does (test.py saves
`result['sample']`): its known pixels are the network's denoising of the blended x_0-level
input, not y. The default ends with the paper's Algorithm 1 at t = 1 (x_0^known = x_0, no
noise): x_0 = m y + (1 - m) x, so the known pixels are exactly the measurement.

No traced hyperparameter: the walk's integers (jump_length, jump_n_sample, ...) are static (they
set the scan's length). The official ImageNet configs add classifier guidance
(classifier_scale), which jaxdiff has no classifier for; the CelebA / Places configs have none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.time_grids import repaint_walk
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    ancestral,
    check_measurement,
    p_mean_variance,
    resolve_hparams,
    resolve_image_shape,
)

# the official confs' schedule_jump_params (t_T 250 with timestep_respacing '250')
WALK_DEFAULTS = {
    "n_sample": 1,
    "jump_length": 10,
    "jump_n_sample": 10,
    "jump2_length": 1,
    "jump2_n_sample": 1,
    "jump3_length": 1,
    "jump3_n_sample": 1,
    "start_resampling": 100000000,
}


def walk_pairs(num_steps: int, t_T: int | None = None, **walk) -> dict:
    """The official loop's pairs as arrays: `k` the model step (down) or the step the forward
    pair starts from (up), and `up`."""
    unknown = sorted(set(walk) - set(WALK_DEFAULTS))
    if unknown:
        raise ValueError(
            f"repaint: unknown walk option(s) {unknown}; known {sorted(WALK_DEFAULTS)}"
        )
    t_T = int(num_steps if t_T is None else t_T)
    if not 1 <= t_T <= num_steps:
        raise ValueError(
            f"repaint: t_T={t_T} must be in [1, {num_steps}] (the respaced step count)"
        )
    times = repaint_walk(t_T, **{**WALK_DEFAULTS, **walk})
    pairs = list(zip(times[:-1], times[1:]))
    return {
        "k": np.array([t for t, _ in pairs], np.int32),
        "up": np.array([t_next > t for t, t_next in pairs]),
    }


def repaint_nfe(num_steps: int, options: dict) -> int:
    """Model calls per image: the walk's down pairs."""
    walk = {k: options[k] for k in WALK_DEFAULTS if k in options}
    return int((~walk_pairs(num_steps, options.get("t_T"), **walk)["up"]).sum())


@register_sampler(
    "repaint",
    needs=("operator", "linear", "measurement", "mask"),
    hparams={},
    ranges={},
    nfe=repaint_nfe,
)
def make_repaint(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    t_T: int | None = None,
    official: bool = False,
    clip_denoised: bool = True,
    dtype=jnp.float32,
    **walk,
):
    """`sample(params, key, y, op_params, hparams=None, replay=None, valid=True)`.

    Options: t_T (default the respaced step count), the walk's `WALK_DEFAULTS`, official (end
    without the final paste), clip_denoised (True in every official conf). replay: {"x_T":
    (H,W,C), "noise": {"z": (P,H,W,C), "known": (P,H,W,C)}} per pair. The trajectory records
    x_in (the blended model input) and x0_hat, NaN on forward pairs.
    """
    del noise
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "repaint")
    pairs = walk_pairs(schedule.num_steps, t_T, **walk)
    k_tab, up_tab = jnp.asarray(pairs["k"]), jnp.asarray(pairs["up"])
    # the forward step from t uses beta_{t+1} (inpa_inj_time_shift 1); t + 1 <= t_T - 1
    k_up = jnp.asarray(np.minimum(pairs["k"] + 1, schedule.num_steps - 1))
    steps = np.arange(len(pairs["k"]))

    def draw(key, x):
        kz, kk = jax.random.split(key)
        return {
            "z": jax.random.normal(kz, x.shape, x.dtype),
            "known": jax.random.normal(kk, x.shape, x.dtype),
        }

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # nothing couples the images
        resolve_hparams(defaults, hparams, "repaint")
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "repaint")
        y = jnp.asarray(y, dtype)
        mask = forward(op_params, jnp.ones(shape, dtype))  # A(1): 1 = known
        known = mask * y
        x_T, k_loop = initial_x(key, replay, shape, dtype, "repaint")

        def down(x, p, z):
            k = k_tab[p]
            abar = schedule.gather(k, dtype)["alphas_cumprod"]
            weighed = jnp.sqrt(abar) * known + jnp.sqrt(1 - abar) * z["known"]
            x_in = jnp.where(p > 0, mask * weighed + (1 - mask) * x, x)
            pmv = p_mean_variance(model_fn, params, schedule, x_in, k, clip_denoised=clip_denoised)
            return ancestral(pmv, k, z["z"]), {"x_in": x_in, "x0_hat": pmv["x0"]}

        def up(x, p, z):
            beta = schedule.gather(k_up[p], dtype)["betas"]
            nan = jnp.full_like(x, jnp.nan)  # what the official branch does not compute
            return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * z["z"], {"x_in": nan, "x0_hat": nan}

        def step(x, p, z, state):
            x_new, record = jax.lax.cond(up_tab[p], up, down, x, p, z)
            return x_new.astype(dtype), state, record

        res = chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="repaint",
                    draw=draw)  # fmt: skip
        if official:
            return res
        return res._replace(x0=mask * y + (1 - mask) * res.x0)

    return sample
