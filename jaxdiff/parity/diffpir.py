"""Replay of the DiffPIR fixtures (`diffpir_<task>_b<B>.npz` + `diffpir.json`; the fixture
README describes the official yuanzhi-zhu/DiffPIR main_ddpir_*.py run they record).

Settings come from the files: iter_num, skip_type, lambda_, zeta, eta and the noise level from
diffpir.json / the npz; the operator from the stored arrays (the mask for inpainting; the stored
kernel as `circular_blur` with sf for deblurring / SR, whose p2o transfer function is checked
against the stored FB); the SR start image is the stored cv2 bicubic upsampling. Every draw is
fed back (x_T_noise, per-step noise_eta / noise_zeta; p_sample's discarded draw is not used).

Two kinds of checks (README "Suggested tolerances"):
- whole trajectories: x_t and x_final against the official float32 run. Inpainting at 1e-3. For
  deblurring / SR the official float32 prox is ill-conditioned at the first step (README pitfall
  1: its own float32 run differs from its float64 replay by 0.046 / 0.022), so the tolerance is 3x
  that difference; x_t is also compared with the float64 replay (`x_t_f64replay`) at 1e-3
  (the stable prox of jaxdiff/operators/proximal.py does not have the official cancellation);
- teacher-forced, every step from the stored inputs: eps_model 1e-4, x0_model 2e-3, the prox
  (inpainting vs x0_prox 1e-5; deblur / SR vs the float64 prox of the same float32 inputs,
  x0_prox_f64tf: 0.2 at step 0, 2e-3 at step 1, 5e-4 after), the update (x_t from x_in, the
  effective x0 and the draws) 1e-5, rho_t relative 1e-6.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule, respace
from jaxdiff.operators import get_operator
from jaxdiff.operators.proximal import CircularBlur, data_prox, p2o
from jaxdiff.parity.common import compare, model_anchor, nchw_to_nhwc, report, sidecar
from jaxdiff.parity.ddpm import ATOL_F64, _convert_beside, load_model, run_dtype
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.common import predict_x0
from jaxdiff.samplers.diffpir import initial_state, update

ATOL_X_INPAINT = 1e-3
ATOL_X_F64REPLAY = 1e-3  # float32 port (stable prox) vs the float64 replay: measured <= 4.1e-4
ATOL = {"eps_model": 1e-4, "x0_model": 2e-3, "update": 1e-5, "prox_inpaint": 1e-5}
PROX_F64TF = (0.2, 2e-3, 5e-4)  # step 0, step 1, later
RTOL_RHO = 1e-6


def _find_model(npz_path: pathlib.Path, model_dir, name: str):
    if model_dir is not None:
        return model_dir
    anchor = model_anchor(npz_path, name)
    folder = anchor.parent
    if (folder / f"{name}.pt").is_file() or (folder / name / "config.json").is_file():
        return _convert_beside(anchor, name)
    raise FileNotFoundError(f"{npz_path}: {name}.pt not found beside it or one folder up")


def build(npz: dict, task: dict):
    """(operator, op_params batched, options, y in [-1, 1] units) from the stored arrays."""
    x_T = nchw_to_nhwc(npz["x_T"])
    b, shape = x_T.shape[0], x_T.shape[1:]
    if "mask" in npz:
        masks = nchw_to_nhwc(npz["mask"]).astype(np.float32)
        op = get_operator("inpaint", image_shape=shape, mask=masks[0])
        return op, {"mask": masks}, {"init": "measurement"}, nchw_to_nhwc(npz["y"])
    kernel = np.asarray(npz["kernel"], np.float32)
    sf = int(npz["sf"])
    kernels = kernel if kernel.ndim == 3 else np.broadcast_to(kernel, (b, *kernel.shape))
    op = CircularBlur(shape, kernel_shape=kernels.shape[1:], sf=sf)
    op_params = {"kernel": np.ascontiguousarray(kernels)}
    opts = {"init": "measurement", "unit_interval": True}
    if "x_init_up" in npz:  # SR: x_T from the cv2 bicubic upsampling of y
        op_params["guide"] = 2 * nchw_to_nhwc(npz["x_init_up"]) - 1
        opts = {"init": "guide", "unit_interval": True, "guide": lambda p, y: p["guide"]}
    return op, op_params, opts, 2 * nchw_to_nhwc(npz["y"]) - 1


def replay(npz_path, model_dir=None, dtype: str = "float32", teacher: bool = True) -> dict:
    """The fixture replayed (see the module docstring); `teacher=False` skips the teacher-forced
    per-step checks (the whole trajectory is still compared)."""
    npz_path = pathlib.Path(npz_path)
    npz = dict(np.load(npz_path))
    cfg = sidecar(npz_path, "diffpir.json")
    m = re.fullmatch(r"diffpir_(.+)_b\d+", npz_path.stem)
    task_name = m.group(1) if m else npz_path.stem
    if task_name not in cfg.get("tasks", {}):
        raise KeyError(f"{npz_path}: task {task_name!r} not in diffpir.json")
    task, common = cfg["tasks"][task_name], cfg.get("common", {})
    inpaint = "mask" in npz
    hp = {
        "lambda_": float(npz["lambda_"]),
        "zeta": float(npz["zeta"]),
        "eta": float(npz["eta"]),
        "guidance_scale": float(common.get("guidance_scale", 1.0)),
        "sigma": 2 * float(npz["noise_level_img"]),
    }
    jdtype, ctx = run_dtype(dtype)
    arrays = {}
    with ctx, jax.default_matmul_precision("highest"):
        sched = make_schedule(1000, "linear", variance_type="learned_range")
        op, op_params, opts, y = build(npz, task)
        b, shape = y.shape[0], nchw_to_nhwc(npz["x_T"]).shape[1:]
        model_name = re.match(r"\s*([\w.-]+?)(\.pt)?\b", cfg.get("model", "adm_tiny")).group(1)
        fn, params, _ = load_model(
            npz_path, _find_model(npz_path, model_dir, model_name), None, jdtype
        )
        sample = get_sampler("diffpir")(
            fn,
            sched,
            operator=op,
            image_shape=shape,
            iter_num=int(task["iter_num"]),
            skip_type=task["skip_type"],
            dtype=jdtype,
            keep_trajectory=True,
            **opts,
        )
        grid = sample.grid
        arrays["t_i"] = _exact(grid.t_i, npz["t_i"])
        arrays["seq"] = _exact(grid.seq, npz["seq"])
        for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_1m_alphas_cumprod"):
            # float32: <= 1 ulp (torch's CPU sqrt is not always correctly rounded); float64: the
            # stored tables are the official float32 arithmetic (relative error ~1e-6)
            atol_tab = 1e-7 if dtype == "float32" else 2e-6
            arrays[f"schedule_{name}"] = compare(grid.tables[name], npz[name], atol=atol_tab)
        full = respace(sched.train_alphas_cumprod, None, "learned_range")
        for name in ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
            arrays[f"gd_{name}"] = compare(full.tables[name], npz[f"gd_{name}"], atol=1e-12)
        if "FB" in npz:
            fb = jax.vmap(lambda k: p2o(jnp.asarray(k, jnp.float32), shape[:2]))(
                op_params["kernel"]
            )
            want = np.broadcast_to(npz["FB"][:, 0], fb.shape)
            arrays["FB"] = compare(np.abs(np.asarray(fb) - want), np.zeros(fb.shape), atol=1e-5)
        if not inpaint:
            y_rebuilt = npz["y_clean"] + float(npz["noise_level_img"]) * npz["y_noise"]
            arrays["y"] = compare(y_rebuilt, npz["y"], atol=1e-6)
        cast = lambda a: jnp.asarray(a, jdtype)  # noqa: E731
        op_params = jax.tree.map(cast, op_params)
        y_j = cast(y)
        rep = {
            "x_T_noise": cast(nchw_to_nhwc(npz["x_T_noise"])),
            "noise": {
                "eta": cast(np.swapaxes(nchw_to_nhwc(npz["noise_eta"]), 0, 1)),
                "zeta": cast(np.swapaxes(nchw_to_nhwc(npz["noise_zeta"]), 0, 1)),
            },
        }
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(params, keys, y_j, op_params, hp, rep)
        traj = jax.tree.map(lambda a: np.swapaxes(np.asarray(a), 0, 1), res.trajectory)
        guide = op_params.get("guide", y_j)
        x_T = jax.vmap(lambda n0, g: initial_state(grid, opts["init"], n0, g, hp["sigma"]))(
            rep["x_T_noise"], guide
        )
        tf = {}
        if teacher:
            tf = teacher_forced(fn, params, sched, op, op_params, y_j, npz, hp, opts, grid, jdtype)
    kk = grid.num_steps - 1
    arrays["x_T"] = compare(x_T, nchw_to_nhwc(npz["x_T"]), atol=1e-6)
    rho_rel = np.abs(traj["rho"][:, 0] / npz["rho_t"][:kk] - 1)
    rtol_rho = RTOL_RHO if dtype == "float32" else 1e-5
    arrays["rho_t"] = {"pass": bool(rho_rel.max() <= rtol_rho), "max_rel_err": float(rho_rel.max())}
    f64 = task.get("f64_replay", {})
    if inpaint:
        atol_x = ATOL_X_INPAINT
    else:
        atol_x = 3 * max(f64["max_abs_diff_x_t_per_step"] + [f64["max_abs_diff_x_final"]])
    if dtype == "float64":
        atol_x = max(atol_x, ATOL_F64) if inpaint else atol_x
    x_t_ref = nchw_to_nhwc(npz["x_t"])[:kk]
    arrays["x_t"] = compare(traj["x"], x_t_ref, atol_x, per_step=True)
    arrays["x_final"] = compare(res.x0, nchw_to_nhwc(npz["x_final"]), atol_x)
    if "x_t_f64replay" in npz:
        atol_f64 = ATOL_F64 if dtype == "float64" else ATOL_X_F64REPLAY
        arrays["x_t_vs_f64replay"] = compare(
            traj["x"], nchw_to_nhwc(npz["x_t_f64replay"])[:kk], atol_f64, per_step=True
        )
    arrays.update(tf)
    extra = {"dtype": dtype, "task": task_name, "batch": b, "steps": int(grid.num_steps)}
    extra["reference_f32_vs_f64_max_abs_x_t"] = max(f64.get("max_abs_diff_x_t_per_step", [0]))
    return report(npz_path, "diffpir", arrays, **extra)


def teacher_forced(fn, params, sched, op, op_params, y, npz, hp, opts, grid, dtype) -> dict:
    """Every step from the stored inputs: the network, the prox, the update (README tolerances)."""
    nhwc = lambda a: jnp.asarray(nchw_to_nhwc(npz[a]), dtype)  # noqa: E731
    x_t = nhwc("x_t")
    k = grid.num_steps
    x_in = jnp.concatenate([nhwc("x_T")[None], x_t[:-1]], 0)  # (K, B, H, W, C)
    full = respace(sched.train_alphas_cumprod, None, "learned_range")
    t = jnp.asarray(grid.t_i)

    def net(x, ti):
        pred = predict_x0(fn, params, full, x, ti, clip_denoised=True)
        return pred["eps"], pred["x0"]

    per_step = jax.vmap(jax.vmap(net, in_axes=(0, None)), in_axes=(0, 0))
    eps, x0 = jax.jit(per_step)(x_in, t)
    out = {
        "tf_eps_model": compare(eps, nhwc("eps_model"), ATOL["eps_model"], per_step=True),
        "tf_x0_model": compare(x0, nhwc("x0_model"), ATOL["x0_model"], per_step=True),
    }
    prox, _ = data_prox(op)
    rho = jnp.asarray(npz["rho_t"][: k - 1], dtype)
    x0m = nhwc("x0_model")[: k - 1]
    unit = opts.get("unit_interval", False)

    def one_prox(p, yy, z, r):
        if unit:
            return prox(p, yy * 0.5 + 0.5, z * 0.5 + 0.5, r) * 2 - 1
        return prox(p, yy, z, r)

    prox_b = jax.vmap(one_prox, in_axes=(0, 0, 0, None))
    got = jax.jit(jax.vmap(prox_b, in_axes=(None, None, 0, 0)))(op_params, y, x0m, rho)
    if "x0_prox_f64tf" in npz:
        want = np.asarray(nchw_to_nhwc(npz["x0_prox_f64tf"]), np.float64)
        err = np.abs(np.asarray(got, np.float64) - want).reshape(k - 1, -1).max(1)
        tol = np.array([PROX_F64TF[min(i, 2)] for i in range(k - 1)])
        out["tf_x0_prox_vs_f64tf"] = {
            "pass": bool(np.all(err <= tol)),
            "per_step_max_abs_err": err.tolist(),
            "atol_per_step": tol.tolist(),
        }
        off = np.abs(np.asarray(got, np.float64) - npz_f(npz, "x0_prox")).reshape(k - 1, -1)
        out["tf_x0_prox_vs_official_f32"] = {
            "pass": True,
            "info": "pitfall 1, not a check",
            "per_step_max_abs_err": off.max(1).tolist(),
        }
    else:
        out["tf_x0_prox"] = compare(got, nhwc("x0_prox"), ATOL["prox_inpaint"], per_step=True)
    rows = {
        n: jnp.asarray(np.asarray(v[: k - 1]), dtype if np.asarray(v).dtype.kind == "f" else None)
        for n, v in grid.per_step.items()
    }
    x0_eff = x0m + hp["guidance_scale"] * (nhwc("x0_prox") - x0m)
    upd = jax.vmap(lambda row, x, x0, z1, z2: update(row, x, x0, z1, z2, hp["zeta"], hp["eta"]))
    got_x = jax.jit(upd)(rows, x_in[: k - 1], x0_eff, nhwc("noise_eta"), nhwc("noise_zeta"))
    out["tf_update"] = compare(got_x, x_t[: k - 1], ATOL["update"], per_step=True)
    return out


def npz_f(npz, name):
    return np.asarray(nchw_to_nhwc(npz[name]), np.float64)


def _exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    return {"pass": ok, "got": got.tolist()[:10], "want": want.tolist()[:10]}
