"""Replay of the DPS trajectory fixtures (`dps_<task>_b<B>.npz` + `dps.json`, README part (d)).

Settings come from the files: the diffusion config (steps, schedule, variance type, respacing,
clip_denoised) and the task's operator from `dps.json`, scale / sigma / mask / kernel / Resizer
tables from the npz, the batch size from the arrays. The operator is built with the registry
(`inpaint` with the stored mask, `blur` with the stored kernel, `super_resolution` whose Resizer
tables are checked against the stored ones). The official code's norm is over the whole batch,
so files with B > 1 replay with `batch_coupled_norm=True` (at B = 1 both norms agree and the
per-sample path is used). Every draw (x_T, per-step eps) is fed back; the q_sample draws the
official code consumes but never uses are ignored. Compared per step: x_t, the pre-guidance
sample, x0_hat and the norm.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.parity.common import compare, nchw_to_nhwc, report, sidecar
from jaxdiff.parity.ddpm import ATOL_F64, load_model, run_dtype
from jaxdiff.samplers import batched, get_sampler

ATOL_X = 1e-3  # x_t over the whole trajectory (fixture README: f32 vs f64 <= 8.5e-5)
ATOL_X0 = 5e-3
RTOL_NORM = 1e-4


def build_operator(task: dict, npz, image_shape):
    """The task's forward model from the registry, configured from the stored arrays."""
    from jaxdiff.operators import get_operator

    name = task.get("operator", {}).get("name", "")
    checks = {}
    if "mask" in npz:
        mask = np.asarray(npz["mask"], np.float32)
        mask = nchw_to_nhwc(mask.reshape((1,) * (4 - mask.ndim) + mask.shape))[0]
        return get_operator("inpaint", image_shape=image_shape, mask=mask), checks
    if "kernel" in npz:
        return get_operator(
            "blur", image_shape=image_shape, kernel=npz["kernel"], method="direct"
        ), checks
    if name == "super_resolution" or "resizer_dim2_weights" in npz:
        factor = task.get("operator", {}).get("scale_factor")
        if factor is None:
            raise ValueError("super_resolution task without operator.scale_factor in dps.json")
        op = get_operator("super_resolution", image_shape=image_shape, factor=int(factor))
        for dim in ("dim2", "dim3"):
            for kind in ("weights", "field_of_view"):
                key = f"resizer_{dim}_{kind}"
                if key in npz:
                    checks[key] = compare(op.tables[f"{dim}_{kind}"], npz[key], atol=1e-7)
        return op, checks
    raise ValueError(f"operator {name!r}: no stored mask/kernel/Resizer tables to build it from")


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    npz = dict(np.load(npz_path))
    cfg = sidecar(npz_path, "dps.json")
    m = re.fullmatch(r"dps_(.+)_b\d+", npz_path.stem)
    task_name = m.group(1) if m else npz_path.stem
    if task_name not in cfg.get("tasks", {}):
        raise KeyError(
            f"{npz_path}: task {task_name!r} not in dps.json; has {sorted(cfg.get('tasks', {}))}"
        )
    task = cfg["tasks"][task_name]
    dc = cfg["diffusion_config"]
    if dc.get("model_mean_type", "epsilon") != "epsilon" or dc.get("dynamic_threshold"):
        raise ValueError(
            f"{npz_path}: only epsilon prediction without dynamic threshold is supported"
        )
    if dc.get("rescale_timesteps"):
        raise ValueError(f"{npz_path}: rescale_timesteps=True is not supported")
    noise_cfg = cfg.get("noise", {"name": "gaussian"})
    likelihood = "poisson" if noise_cfg.get("name") == "poisson" else "gaussian"
    scale = float(npz["scale"]) if "scale" in npz else float(task["scale"])
    jdtype, ctx = run_dtype(dtype)
    with ctx, jax.default_matmul_precision("highest"):
        sched = make_schedule(
            int(dc.get("steps", 1000)),
            dc.get("noise_schedule", "linear"),
            variance_type=dc.get("model_var_type", "learned_range"),
            respacing=dc.get("timestep_respacing"),
        )
        arrays = {"timestep_map": _exact(sched.timestep_map, npz["timestep_map"])}
        if "betas" in npz:
            arrays["schedule_betas"] = compare(sched.betas, npz["betas"], atol=1e-12)
        x_T = nchw_to_nhwc(npz["x_start"])
        b, shape = x_T.shape[0], x_T.shape[1:]
        op, op_checks = build_operator(task, npz, shape)
        arrays.update(op_checks)
        model_name = re.match(r"\s*([\w.-]+?)(\.pt)?\b", cfg.get("model", ""))
        fn, params, meta = load_model(
            npz_path, model_dir, model_name and model_name.group(1), jdtype
        )
        sample = get_sampler("dps")(
            fn,
            sched,
            operator=op,
            image_shape=shape,
            scale=scale,
            likelihood=likelihood,
            batch_coupled_norm=b > 1,
            clip_denoised=bool(dc.get("clip_denoised", True)),
            dtype=jdtype,
            keep_trajectory=True,
        )
        y = jnp.asarray(nchw_to_nhwc(npz["y"]), jdtype)
        noise = np.swapaxes(nchw_to_nhwc(npz["eps_noise"]), 0, 1)
        rep = {"x_T": jnp.asarray(x_T, jdtype), "noise": jnp.asarray(noise, jdtype)}
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample, shared_op_params=True))(
            params, keys, y, op.sample(None), None, rep
        )
        traj = jax.tree.map(np.asarray, res.trajectory)
        # the measurement itself: A(x0) + sigma * y_noise must be the stored y
        y_clean = jax.vmap(lambda x: op.apply(op.sample(None), x))(
            jnp.asarray(nchw_to_nhwc(npz["x0"]), jdtype)
        )
    arrays["y_clean"] = compare(y_clean, nchw_to_nhwc(npz["y_clean"]), atol=1e-5)
    if "y_noise" in npz and "sigma" in npz and likelihood == "gaussian":
        y_rebuilt = npz["y_clean"] + float(npz["sigma"]) * npz["y_noise"]
        arrays["y"] = compare(y_rebuilt, npz["y"], atol=1e-6)
    atol_x = ATOL_F64 if dtype == "float64" else ATOL_X
    sw = lambda a: np.swapaxes(a, 0, 1)  # noqa: E731  (B, K, ...) -> (K, B, ...)
    arrays["x_t"] = compare(sw(traj["x"]), nchw_to_nhwc(npz["x_t"]), atol_x, per_step=True)
    arrays["x_t_pre_guidance"] = compare(
        sw(traj["x_pre_guidance"]), nchw_to_nhwc(npz["x_t_pre_guidance"]), atol_x, per_step=True
    )
    arrays["x0hat"] = compare(
        sw(traj["x0_hat"]), nchw_to_nhwc(npz["x0hat"]), ATOL_X0, per_step=True
    )
    norm = traj["norm"][0]  # per step; every image carries the same value when coupled
    rel = np.abs(norm - npz["norm"]) / np.abs(npz["norm"])
    arrays["norm"] = {
        "pass": bool(np.all(rel <= RTOL_NORM)),
        "max_rel_err": float(rel.max()),
        "rtol": RTOL_NORM,
        "per_step_rel_err": [float(r) for r in rel],
    }
    extra = {
        "dtype": dtype,
        "task": task_name,
        "batch": b,
        "scale": scale,
        "batch_coupled_norm": b > 1,
    }
    f64 = task.get("f64_replay", {}).get(f"b{b}")
    if f64:
        extra["reference_f64_replay_max_abs_diff_x_t_per_step"] = f64["max_abs_diff_x_t_per_step"]
    return report(npz_path, "dps", arrays, **extra)


def _exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    return {"pass": ok, "got": got.tolist()[:8], "want": want.tolist()[:8]}
