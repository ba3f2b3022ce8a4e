"""Replay of the azula guidance fixtures (`mmps_<task>.npz`, and `tmpd_<task>.npz` made from
azula's TMPDenoiser; tests/fixtures/generators/make_azula.py).

azula's MMPSDenoiser / TMPDenoiser ran on the tiny ADM as an azula Denoiser (glue: x0 from eps
on a guided-diffusion respaced linear schedule) inside azula's DDPMSampler / DDIMSampler, on
flattened images with a glue forward model (block-mean super-resolution or a box mask). The
replay builds the schedule (its timestep map and alphas_cumprod checked), the operator and y
from the fixture, runs the registered sampler (`mmps` with the fixture's solver and iteration
count, `tmpd` with covariance="rowsum"), and compares

- the whole chain, fed x_T and the per-step draws: x_t, x0_hat, x0_y (the guided mean), x_next
  and the sample per step, within atol 1e-6 + rtol 2e-6 max|ref|, floored at 3x the reference's
  own float32-vs-float64 chain difference (sidecar f64_replay), never above 1e-3 max(1, max|ref|);
- every step alone from the reference's own input x_t and draw (teacher forcing:
  `<name>_teacher_forced`), floored at 3x the reference's single-step float64 level
  (`step_max_abs_diff_<name>_per_step`), under the same cap.

azula's DDIMSampler eta scales the variance (tau), jaxdiff's the standard deviation: eta here is
the square root of the sidecar's azula_eta.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.operators import get_operator
from jaxdiff.parity.common import (
    Fixture,
    chaotic,
    f64_level,
    model_name,
    nchw_to_nhwc,
    swap01,
)
from jaxdiff.samplers import batched, get_sampler

ATOL, RTOL = 1e-6, 2e-6
CAP = 1e-3  # never looser than CAP * max(1, max|ref|)
TRAJECTORY = ("x_t", "x0_y")
STATES = ("x_t", "x0_hat", "x0_y", "x_next")


def build_operator(fx: Fixture, shape):
    """The glue forward model the sidecar names, built from the registry."""
    cfg = dict(fx.config.get("operator", {}))
    name = cfg.get("name")
    if name == "super_resolution" and cfg.get("method") == "avg_pool":
        return get_operator(name, image_shape=shape, factor=int(cfg["factor"]), method="avg_pool")
    if name == "inpaint":
        return get_operator(name, image_shape=shape, mask=nchw_to_nhwc(fx["mask"]))
    raise ValueError(f"{fx.path}: unknown glue operator {cfg}")


def sampler_options(fx: Fixture, method: str) -> dict:
    g = fx.config.get("guidance", {})
    if method == "mmps":
        return {"solver": g["solver"], "iterations": int(g["iterations"]),
                "product": g.get("product", "vjp")}  # fmt: skip
    if method == "tmpd":
        opts = {"covariance": g.get("covariance", "rowsum")}
        for key in ("solver", "product"):
            if key in g:
                opts[key] = g[key]
        return opts
    raise ValueError(f"{fx.path}: no replay for method {method!r}")


def capped(r: dict | None, ref, step_level=None) -> None:
    """Never looser than CAP * max(1, max|ref|), whatever the float64 floor; except, for a
    teacher-forced step, where the reference's own single-step float32-vs-float64 level
    (`step_level`) is already past the cap: there its 3x floor is the limit."""
    if r is not None:
        r["cap"] = cap = CAP * max(1.0, float(np.abs(ref).max()))
        err = np.asarray(r.get("per_step_max_abs_err", [r["max_abs_err"]]), np.float64)
        limit = np.full(err.shape, cap)
        if step_level is not None:
            lv = np.nan_to_num(np.asarray(step_level, np.float64).reshape(-1))[: len(err)]
            limit[: len(lv)] = np.maximum(limit[: len(lv)], 3 * lv)
            r["steps_past_cap"] = np.nonzero(3 * lv > cap)[0].tolist()
        r["pass"] = bool(r["pass"] and np.all(err <= limit))


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    path = str(npz_path)
    method = path.rsplit("/", 1)[-1].split("_", 1)[0]
    fx = Fixture.load(npz_path, None, dtype, trajectory=TRAJECTORY)
    if fx.config.get("method") != method:
        raise ValueError(f"{fx.path}: sidecar method {fx.config.get('method')!r} != {method!r}")
    dc = fx.config["diffusion"]
    levels = fx.config.get("f64_replay", {})
    x_T = fx.nhwc("x_T")
    b, shape = x_T.shape[0], x_T.shape[1:]
    sigma = float(fx["sigma"])
    azula_eta = float(fx.config.get("sampler", {}).get("azula_eta", 1.0))
    with fx.context():
        fn, params, meta = fx.model(model_name(fx.config.get("model")), model_dir)
        # the model's variance channels are unused (the steps are DDPM / DDIM's)
        sched = make_schedule(
            int(dc.get("steps", 1000)), dc.get("noise_schedule", "linear"),
            variance_type=meta["diffusion"]["variance_type"], respacing=dc["respacing"],
        )  # fmt: skip
        n = sched.num_steps
        order = np.arange(n)[::-1]
        fx.exact("timestep_map", sched.timestep_map)
        fx.rel("alphas_cumprod", sched.alphas_cumprod, 1e-12)
        op = build_operator(fx, shape)
        op_params = op.sample(None)
        out_shape = op.output_shape()
        to_img = lambda a: nchw_to_nhwc(np.asarray(a).reshape(b, *np.roll(out_shape, 1)))  # noqa: E731
        x0 = fx.jnp(fx.nhwc("x0"))
        y_clean = jax.vmap(lambda x: op.apply(op_params, x))(x0)
        fx.check("y_clean", y_clean, 1e-6, 1e-6, ref=to_img(fx.arrays["y_clean"]))
        y = fx.jnp(to_img(fx["y"]))
        sample = get_sampler(method)(
            fn, sched, operator=op, image_shape=shape, sigma=sigma, eta=float(np.sqrt(azula_eta)),
            dtype=fx.jdtype, keep_trajectory=True, **sampler_options(fx, method),
        )  # fmt: skip
        noise = fx.nhwc("noise")
        rep = {"x_T": fx.jnp(x_T), "noise": fx.jnp(swap01(noise))}
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample, shared_op_params=True))(params, keys, y, op_params, None, rep)
        traj = jax.tree.map(swap01, res.trajectory)  # (K, B, ...)
        x_in = np.concatenate([np.asarray(x_T)[None], np.asarray(traj["x"])[:-1]])
        got = {"x_t": x_in, "x0_hat": traj["x0_hat"], "x0_y": traj["x0_y"], "x_next": traj["x"]}
        # teacher forcing: every step from the reference's own input and draw
        x_ref = fx.jnp(nchw_to_nhwc(fx.arrays["x_t"]))
        per_image = jax.vmap(sample.update, in_axes=(None, 0, None, 0, 0, None))
        per_step = jax.vmap(per_image, in_axes=(None, 0, 0, 0, None, None))
        x_next_tf, rec_tf = jax.jit(per_step)(
            params, x_ref, jnp.asarray(order, jnp.int32), fx.jnp(noise), y, op_params
        )
        forced = {"x0_hat": rec_tf["x0_hat"], "x0_y": rec_tf["x0_y"], "x_next": x_next_tf}
    # a chain whose reference's own float32 run already leaves the cap (doubled float64 level
    # past it: common.chaotic) is judged step by step; its whole chain is reported, not gating
    beyond = chaotic(levels, {n: fx.arrays[n] for n in STATES}, CAP)
    horizon = {}
    for name in STATES:
        r = fx.check(name, got[name], ATOL, RTOL, nhwc=True, per_step=True,
                     f64=f64_level(levels, name))  # fmt: skip
        capped(r, fx.arrays[name])
        if beyond and r is not None:
            horizon[name] = fx.results.pop(name)
    for name, value in forced.items():
        lvl = levels.get(f"step_max_abs_diff_{name}_per_step")
        r = fx.check(name, value, ATOL, RTOL, nhwc=True, per_step=True, f64=lvl,
                     key=f"{name}_teacher_forced")  # fmt: skip
        capped(r, fx.arrays[name], lvl)
    r = fx.check("sample", res.x0, ATOL, RTOL, nhwc=True,
                 f64=max(f64_level(levels, "x_next") or [0.0]))  # fmt: skip
    capped(r, fx.arrays["sample"])
    if beyond and r is not None:
        horizon["sample"] = fx.results.pop("sample")
    fx.skip("factor", "the super-resolution factor (the operator reads the sidecar's)")
    fx.skip("y_noise", "the measurement's draw (y is read from the fixture)")
    return fx.report(
        method, images=b, steps=int(n), sigma=sigma, options=sampler_options(fx, method),
        diverged_at=np.asarray(res.diverged_at).tolist(), beyond_cap=beyond,
        chain_beyond_float32_horizon=horizon,
    )  # fmt: skip
