"""Replay of the TDS fixtures (`tds_<task>.npz`, tests/fixtures/generators/make_azula.py).

azula's TDSSampler ran on the tiny ADM as an azula Denoiser (glue: x0 from eps on a respaced
linear schedule, its mean clamped as azula's ADM plugin does) with the twist of the TDS
authors' image code (variance type 6, plus sigma^2), one image, N particles; every normal draw
and every torch.multinomial ancestor was recorded. With random weights the chain is chaotic
(the clamp flips pixels: the reference's own float32 and float64 chains part by 2 in x0_hat
from the third step), so each step is replayed alone from the reference's own input particles,
incoming log-weights, draw and ancestors (teacher forcing, `sample.update`, official=True: the
last step moves x0_hat by the twist as azula does) and compared:

- x_next, and the resampled x0_hat and log p~ (the reference's pre-resampling arrays gathered
  at the recorded ancestors), and the outgoing log-weights (log q - log q_y - log p~; the last
  step's are NaN in azula, where the proposal has zero variance, and not compared):
  |got - ref| <= 1e-6 + 2e-6 max|ref_k| per step, floored at 3x the reference's single-step
  float32-vs-float64 level (sidecar step_max_abs_diff_<name>_per_step), never above
  1e-3 max(1, max|ref|). azula subtracts two log-densities of order 1e6 in float32 (its first
  step's log-weights carry a float64 level of ~100); jaxdiff computes the Gaussian log-ratio in
  closed form, so its error there is the reference's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.parity.common import Fixture, model_name, nchw_to_nhwc
from jaxdiff.parity.mmps import build_operator, capped
from jaxdiff.samplers import get_sampler

ATOL, RTOL = 1e-6, 2e-6
TRAJECTORY = ("x_t", "log_w")


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, None, dtype, trajectory=TRAJECTORY)
    if fx.config.get("method") != "tds":
        raise ValueError(f"{fx.path}: sidecar method {fx.config.get('method')!r} != 'tds'")
    dc = fx.config["diffusion"]
    g = fx.config["guidance"]
    levels = fx.config.get("f64_replay", {})
    x_ref = nchw_to_nhwc(fx["x_t"])  # (K, N, H, W, C): each step's input
    k_steps, n = x_ref.shape[:2]
    shape = x_ref.shape[2:]
    anc = np.asarray(fx["ancestors"], np.int64)
    with fx.context():
        fn, params, meta = fx.model(model_name(fx.config.get("model")), model_dir)
        sched = make_schedule(
            int(dc.get("steps", 1000)), dc.get("noise_schedule", "linear"),
            variance_type=meta["diffusion"]["variance_type"], respacing=dc["respacing"],
        )  # fmt: skip
        fx.exact("timestep_map", sched.timestep_map)
        fx.rel("alphas_cumprod", sched.alphas_cumprod, 1e-12)
        op = build_operator(fx, shape)
        op_params = op.sample(None)
        y = fx.jnp(nchw_to_nhwc(fx["y"].reshape(1, *np.roll(op.output_shape(), 1)))[0])
        x0 = fx.jnp(fx.nhwc("x0")[0])
        y_ref = nchw_to_nhwc(fx.arrays["y_clean"].reshape(1, *np.roll(y.shape, 1)))
        fx.check("y_clean", op.apply(op_params, x0)[None], 1e-6, 1e-6, ref=y_ref)
        sample = get_sampler("tds")(
            fn, sched, operator=op, image_shape=shape, num_particles=n,
            resampling=g.get("resampling", "multinomial"), official=True,
            clip_denoised=bool(dc.get("clip_denoised", False)), dtype=fx.jdtype,
            tausq=float(fx["tausq"]), sigma=float(fx["sigma"]),
        )  # fmt: skip
        draws = {
            "z": fx.jnp(fx.nhwc("noise")),
            "u": jnp.zeros((k_steps, n), jnp.float32),
            "ancestors": jnp.asarray(anc, jnp.int32),
        }
        order = jnp.asarray(np.arange(sched.num_steps)[::-1], jnp.int32)
        step = jax.vmap(sample.update, in_axes=(None, 0, 0, 0, 0, None, None))
        x_next, logw, _, rec = jax.jit(step)(
            params, fx.jnp(x_ref), order, draws, fx.jnp(fx["log_w_in"]), y, op_params
        )
    take = lambda a: np.stack([a[i][anc[i]] for i in range(k_steps)])  # noqa: E731
    refs = {
        "x_next": nchw_to_nhwc(fx.arrays["x_next"]),
        "x0_hat": take(nchw_to_nhwc(fx.arrays["x0_hat"])),
        "log_p": take(fx.arrays["log_p"]),
        "log_w": fx.arrays["log_w"][:-1],
    }
    got = {"x_next": x_next, "x0_hat": rec["x0_hat"], "log_p": rec["log_p"],
           "log_w": np.asarray(logw)[:-1]}  # fmt: skip
    for name, ref in refs.items():
        lvl = levels.get(f"step_max_abs_diff_{name}_per_step")
        if lvl is not None and name == "log_w":
            lvl = lvl[:-1]
        r = fx.check(name, got[name], ATOL, RTOL, ref=ref, per_step=True, f64=lvl,
                     key=f"{name}_teacher_forced")  # fmt: skip
        capped(r, ref)
    fx.skip("sample", "the chaotic chain's end (each step is checked from its own input)")
    fx.skip("y_noise", "the measurement's draw (y is read from the fixture)")
    fx.skip("x_T", "the chain's start (step 0's input is x_t[0])")
    finite = bool(np.all(np.isfinite(np.asarray(x_next))))
    return fx.report("tds", particles=n, steps=int(k_steps), images=1,
                     diverged_at=[-1 if finite else 0])  # fmt: skip
