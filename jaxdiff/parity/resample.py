"""Replay of the ReSample fixtures (`resample_<name>.npz` + the same-name `.json`).

Settings from the files: the DDIM step count (`ddim_steps`, on the CompVis 'uniform' grid), the
SR factor, the LDM (the sidecar's yaml and codebook scale, converted as for
parity.latent_daps). Replayed with `official=True`: the official pseudo_x0, the DPS gradient
with eps held constant (apply_model under torch.no_grad), the time-travel coefficients. Draws
fed back: z_T and the resampling draws (the DDIM draws are multiplied by eta = 0). Compared: z
after each step's DPS update and at its end, every main step's pseudo_x0, the DPS norms and
gradients, the optimisations' stopping steps (exact, or between the official float32 and float64
runs' where those differ: a near tie in the stop test), the decoded sample (the final latent
through it). Rule: 1e-5 * max(1, max|ref|) floored at 3x the official code's float32-vs-float64
difference (sidecar f64_replay), never looser than 1e-3 * max(1, max|ref|). A batch of several
images is replayed with the official whole-batch DPS norm and optimisation losses
(`batch_coupled=True`); the draws are split by the shapes the sidecar's draw_order records.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from jaxdiff.parity.common import Fixture

TRAJECTORY = ("z_end",)
CAP = 1e-3


def split_draws(flat, order: list[str]) -> list[np.ndarray]:
    """The recorded draws, one array each, from the flat record and the sidecar's draw_order
    entries ("torch.randn[1, 3, 8, 8]": the call and its shape; y's noise first, image-sized)."""
    shapes = [json.loads(entry[entry.index("[") :]) for entry in order]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])
    flat = np.asarray(flat, np.float32).reshape(-1)
    if ends[-1] != flat.size:
        raise ValueError(f"draws: {flat.size} values, the draw_order's shapes hold {ends[-1]}")
    return [flat[e - int(np.prod(s)) : e].reshape(s) for s, e in zip(shapes, ends, strict=True)]


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    from jaxdiff.diffusion import make_schedule
    from jaxdiff.diffusion import scheduler as sched
    from jaxdiff.operators import get_operator
    from jaxdiff.parity import latent_daps as ld
    from jaxdiff.samplers import batched, get_sampler

    path = pathlib.Path(npz_path)
    fx = Fixture.load(path, "resample", dtype, sidecar_name=path.with_suffix(".json").name,
                      trajectory=TRAJECTORY)  # fmt: skip
    cfg = fx.config
    fx.task = {"ldm_config": cfg["ldm_config"], "codebook_scale": cfg.get("codebook_scale", 1.0)}
    levels = cfg.get("f64_replay", {})
    with fx.context():
        fns, model_fn, params, prior = ld.load_prior(fx, model_dir, fx.jdtype)
        x0 = fx.nhwc("x0")
        op = get_operator("super_resolution", image_shape=x0.shape[1:],
                          factor=int(cfg["sr_factor"]))  # fmt: skip
        p = op.sample(None)
        fx.check("y_clean", jax.vmap(lambda x: op.apply(p, x))(fx.jnp(x0)), 1e-5, nhwc=True)
        y = fx.jnp(fx.nhwc("y"))
        abar = sched.alphas_cumprod(prior.scheduler)
        schedule = make_schedule(
            alphas_cumprod=abar, respacing=f"ldm{int(cfg['ddim_steps'])}", convention="diffusers"
        )
        lshape = fns.latent_shape
        order = cfg["draw_order"]
        draws = split_draws(fx["draws"], order)
        batch = int(draws[1].shape[0])
        sample = get_sampler("resample")(
            model_fn, schedule, operator=op, latent=fns, official=True, keep_trajectory=True,
            batch_coupled=batch > 1, dtype=fx.jdtype,
        )  # fmt: skip
        like = [i for i, d in enumerate(order) if d.startswith("torch.randn_like")][1:]
        steps = int(len(fx.arrays["step_index"]))
        kinds = np.asarray(sample.kind)
        noise = np.zeros((batch, steps, *lshape), np.float32)
        for pos, i in zip(np.nonzero(kinds)[0], like, strict=True):
            noise[:, pos] = np.transpose(draws[i], (0, 2, 3, 1))
        z_T = np.transpose(draws[1], (0, 2, 3, 1))
        rep = {"x_T": fx.jnp(z_T), "noise": {"resample": fx.jnp(noise)}}
        run = jax.jit(batched(sample, shared_op_params=True))
        res = run(params, jax.random.split(jax.random.key(0), batch), y, p, None, rep)
        traj = jax.tree.map(np.asarray, res.trajectory)
    b1 = lambda a: np.moveaxis(a, 0, 1)  # noqa: E731  (B, N, ...) -> (N, B, ...)
    got = {
        "z_end": b1(traj["x"]),
        "z_after_dps": b1(traj["z_after_dps"]),
        "pseudo_x0": b1(traj["pseudo_x0"]),
        "dps_grad": b1(traj["dps_grad"]),
    }
    for key, g in got.items():
        ref = fx.arrays[key]
        top = max(1.0, float(np.abs(ref).max()))
        f64 = min(levels.get(f"max_abs_diff_{key}", 0.0), CAP * top / 3)
        fx.check(key, g, 1e-5 * top, nhwc=True, per_step=True, f64=f64)
    top = max(1.0, float(np.abs(fx.arrays["x_final"]).max()))
    f64 = min(levels.get("max_abs_diff_x_final", 0.0), CAP * top / 3)
    fx.check("x_final", np.asarray(res.x0), 1e-5 * top, nhwc=True, f64=f64)
    fx.rel("dps_norm", traj["dps_norm"][0], 1e-4)
    # the stopping steps (one per optimisation, the batch's): where the official float32 and
    # float64 runs stop apart (a near tie in the stop test), anything between them
    iters = cfg.get("iters", {})
    stops = traj["opt_steps"][0][np.nonzero(np.asarray(sample.kind))[0]].tolist()
    stops.append(int(traj["final_opt_steps"][0]))
    want = [*np.ravel(fx.arrays.get("pixel_opt_iters", [])), *fx.arrays["latent_opt_iters"]]
    lo, hi = np.array(want, np.int64), np.array(want, np.int64)
    for name in ("pixel_opt_iters", "latent_opt_iters"):
        if name in iters and len(iters[name]) == 2:
            start = 0 if name == "pixel_opt_iters" else len(fx.arrays.get("pixel_opt_iters", []))
            f32, f64 = (np.asarray(v, np.int64) for v in iters[name])
            sl = slice(start, start + len(f32))
            lo[sl], hi[sl] = np.minimum(f32, f64), np.maximum(f32, f64)
    ok = bool(len(stops) == len(want) and np.all((lo <= stops) & (stops <= hi)))
    fx.add("opt_steps", {"pass": ok, "got": stops, "want": want,
                         "accepted": [lo.tolist(), hi.tolist()]})  # fmt: skip
    fx.skip("z_final", "the final latent (compared through its decoding x_final)")
    return fx.report("resample", steps=steps)
