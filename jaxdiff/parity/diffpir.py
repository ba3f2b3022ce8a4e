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

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule, respace
from jaxdiff.operators import get_operator
from jaxdiff.operators.proximal import CircularBlur, data_prox, p2o
from jaxdiff.parity.common import Fixture, f64_level, f64_max, model_name, nchw_to_nhwc, swap01
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.common import predict_x0
from jaxdiff.samplers.diffpir import initial_state, update

ATOL_X_INPAINT = 1e-3
ATOL_X_F64REPLAY = 1e-3  # float32 port (stable prox) vs the float64 replay: measured <= 4.1e-4
ATOL_F64 = 1e-3  # a float64 replay vs the float32 reference on inpainting: its own rounding
TRAJECTORY = ("x_t",)
ATOL = {"eps_model": 1e-4, "x0_model": 2e-3, "update": 1e-5, "prox_inpaint": 1e-5}
PROX_F64TF = (0.2, 2e-3, 5e-4)  # step 0, step 1, later
RTOL_RHO = 1e-6


def build(npz, task: dict):
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
    fx = Fixture.load(npz_path, "diffpir", dtype, trajectory=TRAJECTORY)
    task, common = fx.task, fx.config.get("common", {})
    npz = fx.arrays
    inpaint = "mask" in npz
    hp = {
        "lambda_": float(fx["lambda_"]),
        "zeta": float(fx["zeta"]),
        "eta": float(fx["eta"]),
        "guidance_scale": float(common.get("guidance_scale", 1.0)),
        "sigma": 2 * float(fx["noise_level_img"]),
    }
    gd = fx.config.get("create_model_and_diffusion_args", {})
    with fx.context():
        sched = make_schedule(
            int(common.get("num_train_timesteps", gd.get("diffusion_steps", 1000))),
            gd.get("noise_schedule", "linear"),
            variance_type="learned_range",
        )
        op, op_params, opts, y = build(fx, task)
        b, shape = y.shape[0], fx.nhwc("x_T").shape[1:]
        fn, params, _ = fx.model(model_name(fx.config.get("model"), "adm_tiny"), model_dir)
        sample = get_sampler("diffpir")(
            fn, sched, operator=op, image_shape=shape, iter_num=int(task["iter_num"]),
            skip_type=task["skip_type"], dtype=fx.jdtype, keep_trajectory=True, **opts,
        )  # fmt: skip
        grid = sample.grid
        for name in ("t_i", "seq"):
            fx.exact(name, getattr(grid, name))
        fx.exact("t_im1", np.concatenate([grid.t_i[1:], [-1]]))  # -1: the last step has none
        # float32: <= 1 ulp (torch's CPU sqrt is not always correctly rounded); float64: the
        # stored tables are the official float32 arithmetic (relative error ~1e-6)
        atol_tab = 1e-7 if dtype == "float32" else 2e-6
        for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_1m_alphas_cumprod"):
            fx.check(name, grid.tables[name], atol_tab)
        full = respace(sched.train_alphas_cumprod, None, "learned_range")
        for name in ("sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"):
            fx.check(f"gd_{name}", full.tables[name], 1e-12)
        if "FB" in fx:
            fb = jax.vmap(lambda k: p2o(jnp.asarray(k, jnp.float32), shape[:2]))(
                op_params["kernel"]
            )
            diff = np.abs(np.asarray(fb) - np.broadcast_to(fx["FB"][:, 0], fb.shape))
            fx.check("FB", diff, 1e-5, ref=np.zeros(diff.shape))  # complex: |got - ref|
        if not inpaint and "y_noise" in fx:
            y_rebuilt = fx.arrays["y_clean"] + float(fx["noise_level_img"]) * fx["y_noise"]
            fx.check("y", y_rebuilt, 1e-6)
        op_params = jax.tree.map(fx.jnp, op_params)
        y_j = fx.jnp(y)
        rep = {
            "x_T_noise": fx.jnp(fx.nhwc("x_T_noise")),
            "noise": {
                "eta": fx.jnp(swap01(fx.nhwc("noise_eta"))),
                "zeta": fx.jnp(swap01(fx.nhwc("noise_zeta"))),
            },
        }
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(params, keys, y_j, op_params, hp, rep)
        traj = jax.tree.map(swap01, res.trajectory)
        guide = op_params.get("guide", y_j)
        x_T = jax.vmap(lambda n0, g: initial_state(grid, opts["init"], n0, g, hp["sigma"]))(
            rep["x_T_noise"], guide
        )
        if teacher:
            teacher_forced(fx, fn, params, sched, op, op_params, y_j, hp, opts, grid)
    kk = grid.num_steps - 1
    fx.check("x_T", x_T, 1e-6, nhwc=True)
    rtol_rho = RTOL_RHO if dtype == "float32" else 1e-5
    fx.rel("rho_t", traj["rho"][:, 0], rtol_rho, ref=fx.arrays["rho_t"][:kk])
    f64 = task.get("f64_replay", {})
    if inpaint:
        atol_x = ATOL_X_INPAINT if dtype == "float32" else max(ATOL_X_INPAINT, ATOL_F64)
        lvl = None
    else:  # README pitfall 1: the official float32 prox; 3x its own float64-replay difference
        atol_x = 0.0
        lvl = f64_max([f64_max(f64_level(f64, "x_t")), f64_max(f64_level(f64, "x_final"))])
    x_t_ref = fx.nhwc("x_t")[:kk]
    fx.check("x_t", traj["x"], atol_x, ref=x_t_ref, per_step=True, f64=lvl)
    fx.check("x_final", res.x0, atol_x, nhwc=True, f64=lvl)
    if "x_t_f64replay" in fx:
        atol_f64 = ATOL_F64 if dtype == "float64" else ATOL_X_F64REPLAY
        ref = fx.nhwc("x_t_f64replay")[:kk]
        fx.check(
            "x_t_f64replay", traj["x"], atol_f64, ref=ref, per_step=True, key="x_t_vs_f64replay"
        )
    for name in ("noise_psample",):
        fx.skip(name, "p_sample's draw the official loop discards")
    for name in ("img_H_u8", "img_E_u8"):
        fx.skip(name, "8-bit pictures of the ground truth / the output (x_final is compared)")
    for name in ("betas", "reduced_alpha_cumprod", "rhos", "sigmas", "curr_sigma", "model_t",
                 "eta_sigma", "c_eps", "sqrt_zeta", "sqrt_1m_zeta", "imresize_weights",
                 "imresize_indices", "t_y"):  # fmt: skip
        fx.skip(name, "a table of the official script folded into the grid rows (x_t is compared)")
    for name in ("sigma", "sf", "y_clean", "y_noise", "x_final_recovered"):
        fx.skip(name, "the script's own bookkeeping (the run reads y, noise_level_img, kernel, sf)")
    extra = {"batch": b, "steps": int(grid.num_steps)}
    extra["reference_f32_vs_f64_max_abs_x_t"] = f64_max(f64_level(f64, "x_t"))
    return fx.report("diffpir", **extra)


def teacher_forced(fx: Fixture, fn, params, sched, op, op_params, y, hp, opts, grid) -> None:
    """Every step from the stored inputs: the network, the prox, the update (README tolerances)."""
    nhwc = lambda a: fx.jnp(nchw_to_nhwc(fx.arrays[a]))  # noqa: E731
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
    fx.check("eps_model", eps, ATOL["eps_model"], nhwc=True, per_step=True, key="tf_eps_model")
    fx.check("x0_model", x0, ATOL["x0_model"], nhwc=True, per_step=True, key="tf_x0_model")
    prox, _ = data_prox(op)
    rho = fx.jnp(fx.arrays["rho_t"][: k - 1])
    x0m = nhwc("x0_model")[: k - 1]
    unit = opts.get("unit_interval", False)

    def one_prox(p, yy, z, r):
        if unit:
            return prox(p, yy * 0.5 + 0.5, z * 0.5 + 0.5, r) * 2 - 1
        return prox(p, yy, z, r)

    prox_b = jax.vmap(one_prox, in_axes=(0, 0, 0, None))
    got = jax.jit(jax.vmap(prox_b, in_axes=(None, None, 0, 0)))(op_params, y, x0m, rho)
    if "x0_prox_f64tf" in fx:
        # README pitfall 1: the official float32 prox is ill-conditioned; the float64 prox of
        # the same inputs is the reference (0.2 at step 0, 2e-3 at step 1, 5e-4 after)
        tol = np.array([PROX_F64TF[min(i, 2)] for i in range(k - 1)])
        fx.check("x0_prox_f64tf", got, 0.0, nhwc=True, per_step=True, f64=tol / 3,
                 key="tf_x0_prox_vs_f64tf")  # fmt: skip
        fx.skip("x0_prox", "the official float32 prox (README pitfall 1): x0_prox_f64tf is the one")
    else:
        fx.check("x0_prox", got, ATOL["prox_inpaint"], nhwc=True, per_step=True, key="tf_x0_prox")
    rows = {
        n: jnp.asarray(
            np.asarray(v[: k - 1]), fx.jdtype if np.asarray(v).dtype.kind == "f" else None
        )
        for n, v in grid.per_step.items()
    }
    x0_eff = x0m + hp["guidance_scale"] * (nhwc("x0_prox") - x0m)
    upd = jax.vmap(lambda row, x, x0, z1, z2: update(row, x, x0, z1, z2, hp["zeta"], hp["eta"]))
    got_x = jax.jit(upd)(rows, x_in[: k - 1], x0_eff, nhwc("noise_eta"), nhwc("noise_zeta"))
    ref = nchw_to_nhwc(fx.arrays["x_t"])[: k - 1]
    fx.check("x_t", got_x, ATOL["update"], ref=ref, per_step=True, key="tf_update")


def _float_or(v, dtype):
    return dtype if np.asarray(v).dtype.kind == "f" else None
