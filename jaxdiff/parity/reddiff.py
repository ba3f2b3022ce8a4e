"""Replay of the RED-diff trajectory fixtures (`reddiff_<task>_b<B>.npz` + `reddiff.json`).

The fixtures ran NVlabs/RED-diff algos/reddiff.py (commit 66482f23) on adm_tiny. Settings come
from the files: hparams (lr, sigma_x0, grad_term_weight, obs_weight) from the npz, the time grid
and denoise_term_weight from `reddiff.json`, alpha-bar from the stored float32 cumprod, and the
operator in the official layout (utils/degredations.py: flat channel-major y) from the stored
pieces through `jaxdiff.operators.official_svd`. Every per-step draw (noise_x0, noise_xt) is fed
back. The official loss means over the whole batch, so B > 1 replays with `batch_coupled=True`.

Compared (tolerances from the fixture README, float32 vs the reference's own float64 replay):
mu (the recorded state, mu[0] = H_pinv(y) and after every Adam step) and the output sample
within 1e-4 + 1e-5 max|mu|; eps 1e-4; grad 1e-7; exp_avg 5e-8; exp_avg_sq 1e-10; losses rtol
5e-5 (the total, a difference, atol 2e-5); snr_inv / w_t rtol 1e-6. The Adam arithmetic is
checked teacher-forced on the recorded gradients: optax's Adam (the sampler's) and torch's
single-tensor arithmetic written out (`torch_adam`) against the recorded Adam state.
"""

from __future__ import annotations

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.parity.common import compare, model_anchor, nchw_to_nhwc, report, sidecar
from jaxdiff.parity.ddpm import load_model, run_dtype
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.reddiff import ADAM_BETAS, ADAM_EPS, adam, adam_moments

RTOL_MU, ATOL_MU = 1e-5, 1e-4
ATOL = {"eps": 1e-4, "grad": 1e-7, "exp_avg": 5e-8, "exp_avg_sq": 1e-10}
RTOL_LOSS, ATOL_LOSS_TOTAL, RTOL_WEIGHT = 5e-5, 2e-5, 1e-6
# step 0's loss_obs is the residual |y - H(H_pinv(y) + sigma_x0 n)|^2: 3e-10 on sr4, where
# float32 rounding of y (ulp ~6e-8) alone moves it by ~1e-14; an absolute floor covers that
ATOL_LOSS = 1e-12
# Adam teacher-forced on the recorded gradients: ten steps of float32 rounding of mu (optax
# divides by sqrt(v_hat) + eps where torch divides by sqrt(v) / sqrt(bc2) + eps: a few ulps)
RTOL_ADAM_MU = 1e-6


def build_operator(npz: dict, deg: str, image_shape, b: int):
    """The official operator of `deg` (utils/degredations.py) from the stored pieces: an
    `official_svd.OfficialOperator` and per-image op_params (leading axis b). RED-diff's H_pinv
    passes a zero singular's coordinate through (pinv_zero="pass")."""
    from jaxdiff.operators import official_svd as off

    shape = tuple(image_shape)
    if deg in ("in2_box", "in2_20ff") or deg.startswith("in2"):
        svd = off.OfficialMaskedInpainting(shape)
        mask = nchw_to_nhwc(np.asarray(npz["mask"], np.float32))
        return off.OfficialOperator(svd), {"mask": jnp.asarray(mask[:b])}
    if deg.startswith("inp"):
        kept = np.asarray(npz["kept_indices"], np.int32)[:b]
        missing = np.asarray(npz["missing_indices"], np.int32)[:b]
        svd = off.OfficialInpainting(shape, kept.shape[-1], interleaved=False, pinv_zero="pass")
        params = {"kept_indices": jnp.asarray(kept), "missing_indices": jnp.asarray(missing)}
        return off.OfficialOperator(svd), params
    if deg.startswith("deblur"):
        svd = off.OfficialDeblurring(
            shape,
            npz["U_small"],
            npz["V_small"],
            npz["singulars_small"],
            npz["perm"],
            tiled=True,
            pinv_zero="pass",
        )
        return off.OfficialOperator(svd), {"dummy": jnp.zeros((b,))}
    m = re.fullmatch(r"sr(\d+)", deg)
    if m:
        svd = off.OfficialSuperResolution(
            shape,
            int(m.group(1)),
            npz["U_small"],
            npz["V_small"],
            npz["singulars_small"],
            pinv_zero="pass",
        )
        return off.OfficialOperator(svd), {"dummy": jnp.zeros((b,))}
    raise ValueError(f"reddiff replay: no official operator for deg {deg!r}")


def torch_adam(grads, mu0, lr: float, betas=ADAM_BETAS, eps: float = ADAM_EPS):
    """torch.optim.Adam's single-tensor step in float32 numpy, teacher-forced on `grads` (K, ...):
    exp_avg.lerp_(g, 1 - b1) and exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2) (fused
    multiply-adds on the CPU, reproduced in float64 then rounded), bias corrections in Python
    float64 applied as float32 scalars, mu.addcdiv_(exp_avg, denom, value=-lr / bc1).
    Returns (exp_avg, exp_avg_sq, mu) stacked over steps."""
    f, d = np.float32, np.float64
    mu = np.asarray(mu0, f)
    m, v = np.zeros_like(mu), np.zeros_like(mu)
    out = ([], [], [])
    for k, g in enumerate(np.asarray(grads, f), start=1):
        m = (d(f(1 - betas[0])) * d(g - m) + d(m)).astype(f)
        v = (d(v * f(betas[1])) + d(f(1 - betas[1]) * g) * d(g)).astype(f)
        bc1, bc2 = 1 - betas[0] ** k, 1 - betas[1] ** k
        denom = np.sqrt(v) / f(math.sqrt(bc2)) + f(eps)
        mu = mu + (f(-lr / bc1) * m) / denom
        for lst, a in zip(out, (m, v, mu)):
            lst.append(a)
    return tuple(np.stack(a) for a in out)


def optax_adam(grads, mu0, lr: float):
    """The sampler's optimiser (`reddiff.adam`), teacher-forced on `grads`: (exp_avg, exp_avg_sq,
    mu) stacked over steps."""
    opt = adam(jnp.float32(lr))

    def step(carry, g):
        mu, st = carry
        upd, st = opt.update(g, st, mu)
        mu = mu + upd
        m, v = adam_moments(st)
        return (mu, st), (m, v, mu)

    mu0 = jnp.asarray(mu0, jnp.float32)
    _, out = jax.lax.scan(step, (mu0, opt.init(mu0)), jnp.asarray(grads, jnp.float32))
    return tuple(np.asarray(a) for a in out)


def _tol_mu(want) -> float:
    return ATOL_MU + RTOL_MU * float(np.max(np.abs(want)))


def _rel(got, want, rtol: float, atol: float = 0.0) -> dict:
    """|got - want| <= atol + rtol |want| per entry; reports the largest relative error."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    rel = err / np.maximum(np.abs(want), 1e-30)
    ok = bool(np.all(err <= atol + rtol * np.abs(want)))
    return {"pass": ok, "max_rel_err": float(rel.max()), "rtol": rtol, "atol": atol}


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    npz_path = pathlib.Path(npz_path)
    npz = dict(np.load(npz_path))
    cfg = sidecar(npz_path, "reddiff.json")
    m = re.fullmatch(r"reddiff_(.+)_b\d+", npz_path.stem)
    task_name = m.group(1) if m else npz_path.stem
    if task_name not in cfg.get("tasks", {}):
        raise KeyError(f"{npz_path}: task {task_name!r} not in reddiff.json")
    task = cfg["tasks"][task_name]
    algo = task["algo_cfg"]
    if not algo.get("awd", True) or algo.get("cond_awd", False):
        raise ValueError(f"{npz_path}: only awd=True, cond_awd=False (the network's eps) is ported")
    hp = {k: float(npz[k]) for k in ("lr", "sigma_x0", "grad_term_weight", "obs_weight")}
    num_steps = int(task["exp_cfg"]["num_steps"])
    mu_ref = nchw_to_nhwc(npz["mu"])  # (T+1, B, H, W, C)
    b, shape = mu_ref.shape[1], mu_ref.shape[2:]
    coupled = b > 1
    jdtype, ctx = run_dtype(dtype)
    with ctx, jax.default_matmul_precision("highest"):
        sched = make_schedule(
            alphas_cumprod=np.asarray(npz["alphas"][1:], np.float64),
            respacing=f"skip{num_steps}",
        )
        arrays = {
            "timesteps": _exact(sched.timestep_map[::-1], npz["timesteps"]),
            "alpha_t": _rel(sched.alphas_cumprod[::-1].astype(np.float32), npz["alpha_t"], 1e-7),
        }
        op, op_params = build_operator(npz, algo["deg"], shape, b)
        if "singulars_used" in npz:
            arrays["singulars_used"] = compare(
                op.svd.singulars(jax.tree.map(lambda a: a[0], op_params)),
                npz["singulars_used"],
                atol=0.0,
            )
        name = re.match(r"\s*([\w.-]+?)(\.pt)?\b", cfg.get("model", {}).get("file", "adm_tiny"))
        name = name.group(1) if name else "adm_tiny"
        where = npz_path if model_dir else model_anchor(npz_path, name)
        fn, params, _ = load_model(where, model_dir, name, jdtype)
        sample = get_sampler("reddiff")(
            fn,
            sched,
            operator=op,
            image_shape=shape,
            denoise_term_weight=algo.get("denoise_term_weight", "linear"),
            batch_coupled=coupled,
            dtype=jdtype,
            keep_trajectory=True,
            **hp,
        )
        y = jnp.asarray(npz["y"], jdtype)
        sw = lambda a: np.swapaxes(np.asarray(a), 0, 1)  # noqa: E731  (K, B, ...) <-> (B, K, ...)
        noise = {k: jnp.asarray(sw(nchw_to_nhwc(npz[k])), jdtype) for k in ("noise_x0", "noise_xt")}
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(params, keys, y, op_params, None, {"noise": noise})
        traj = jax.tree.map(lambda a: sw(a), res.trajectory)
        x0 = jnp.asarray(nchw_to_nhwc(npz["x0"]), jdtype)
        y_clean = jax.vmap(op.apply)(op_params, x0)
        mu0 = jax.vmap(op.svd.H_pinv)(op_params, y)
        grads = nchw_to_nhwc(npz["grad"])
        adam_jax = [optax_adam(grads[:, i], mu_ref[0, i], hp["lr"]) for i in range(b)]
    arrays["y_clean"] = compare(y_clean, npz["y_clean"], atol=1e-5)
    sigma_y = 2 * float(algo.get("sigma_y", cfg.get("sigma_y_cfg", 0.0)))
    arrays["y"] = compare(npz["y_clean"] + sigma_y * npz["y_noise"], npz["y"], atol=1e-6)
    mu = np.concatenate([np.asarray(mu0)[None], traj["mu"]])
    arrays["mu"] = compare(mu, mu_ref, _tol_mu(mu_ref), per_step=True)
    arrays["sample"] = compare(res.x0, nchw_to_nhwc(npz["sample"]), _tol_mu(npz["sample"]))
    for k, atol in ATOL.items():
        arrays[k] = compare(traj[k], nchw_to_nhwc(npz[k]), atol, per_step=True)
    for k in ("loss_obs", "loss_noise"):
        arrays[k] = _rel(traj[k][:, 0], npz[k], RTOL_LOSS, ATOL_LOSS)
    arrays["loss"] = compare(traj["loss"][:, 0], npz["loss"], ATOL_LOSS_TOTAL)
    for k in ("snr_inv", "w_t"):
        arrays[k] = _rel(traj[k][:, 0], npz[k], RTOL_WEIGHT)
    # Adam alone, teacher-forced on the recorded gradients (float32 rounding only)
    adam_torch = [torch_adam(grads[:, i], mu_ref[0, i], hp["lr"]) for i in range(b)]
    for j, k in enumerate(("exp_avg", "exp_avg_sq", "mu")):
        want = mu_ref[1:] if k == "mu" else nchw_to_nhwc(npz[k])
        tol = {"exp_avg": 1e-9, "exp_avg_sq": 1e-12}.get(k)
        tol = RTOL_ADAM_MU * max(1.0, float(np.abs(want).max())) if tol is None else tol
        arrays[f"adam_optax_{k}"] = compare(np.stack([a[j] for a in adam_jax], 1), want, tol)
        arrays[f"adam_torch_{k}"] = compare(np.stack([a[j] for a in adam_torch], 1), want, tol)
    extra = {"dtype": dtype, "task": task_name, "batch": b, "batch_coupled": coupled, **hp}
    f64 = task.get("runs", {}).get(f"b{b}", {}).get("f64_replay", {})
    if f64:
        extra["reference_f64_replay_max_abs_diff"] = {
            k: max(v) for k, v in f64.items() if isinstance(v, list) and v
        }
    return report(npz_path, "reddiff", arrays, **extra)


def _exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    return {"pass": ok, "got": got.tolist()[:10], "want": want.tolist()[:10]}
