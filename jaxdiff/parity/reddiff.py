"""Replay of the RED-diff trajectory fixtures (`reddiff_<task>_b<B>.npz` + `reddiff.json`).

The fixtures ran NVlabs/RED-diff algos/reddiff.py (commit 66482f23) on adm_tiny. Settings come
from the files: hparams (lr, sigma_x0, grad_term_weight, obs_weight) from the npz, the time grid
(`get_timesteps`) and denoise_term_weight from `reddiff.json`, alpha-bar from the stored float32
cumprod, and the official operator from the stored pieces (`parity.operators.reddiff_operator`).
Every per-step draw (noise_x0, noise_xt) is fed back. The official loss means over the whole
batch, so B > 1 replays with `batch_coupled=True`.

Rules (fixture README): mu (mu[0] = H_pinv(y), then after every Adam step) and the output
sample 1e-4 + 1e-5 max|mu|; eps 1e-4; grad 1e-7; exp_avg 5e-8; exp_avg_sq 1e-10; each floored
at 3x the official code's own float32-vs-float64 difference (reddiff.json runs.b<B>.f64_replay);
loss_obs / loss_noise rtol 5e-5 (the total, a difference, atol 2e-5); snr_inv / w_t / alphas
rtol 1e-6. The Adam arithmetic alone is checked teacher-forced on the recorded gradients:
optax's Adam (the sampler's) and torch's single-tensor arithmetic (`torch_adam`) against the
recorded state, to float32 rounding (2e-6 of the largest value).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.parity.common import Fixture, f64_level, f64_max, model_name, swap01
from jaxdiff.parity.operators import reddiff_operator
from jaxdiff.parity.pigdm import measurement, reddiff_grid
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers.reddiff import ADAM_BETAS, ADAM_EPS, adam, adam_moments

TRAJECTORY = ("mu",)
RTOL_MU, ATOL_MU = 1e-5, 1e-4
ATOL = {"eps": 1e-4, "grad": 1e-7, "exp_avg": 5e-8, "exp_avg_sq": 1e-10}
RTOL_LOSS, ATOL_LOSS_TOTAL, RTOL_WEIGHT = 5e-5, 2e-5, 1e-6
# step 0's loss_obs is the residual |y - H(H_pinv(y) + sigma_x0 n)|^2: 3e-10 on sr4, where
# float32 rounding of y (ulp ~6e-8) alone moves it by ~1e-14; an absolute floor covers that
ATOL_LOSS = 1e-12
# Adam teacher-forced on the recorded gradients: ten steps of float32 rounding (optax divides
# by sqrt(v_hat) + eps where torch divides by sqrt(v) / sqrt(bc2) + eps: a few ulps)
RTOL_ADAM = 2e-6


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


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    fx = Fixture.load(npz_path, "reddiff", dtype, trajectory=TRAJECTORY)
    task = fx.task
    algo = task["algo_cfg"]
    if not algo.get("awd", True) or algo.get("cond_awd", False):
        raise ValueError(f"{fx.path}: only awd=True, cond_awd=False (the network's eps) is ported")
    hp = {k: float(fx[k]) for k in ("lr", "sigma_x0", "grad_term_weight", "obs_weight")}
    mu_ref = fx.nhwc("mu")  # (T+1, B, H, W, C)
    b, shape = mu_ref.shape[1], mu_ref.shape[2:]
    coupled = b > 1
    with fx.context():
        sched, _, _ = reddiff_grid(fx, "reddiff")
        op, op_params, _ = reddiff_operator(fx, algo["deg"], shape, b)
        op_params = jax.tree.map(jnp.asarray, op_params)
        if "singulars_used" in fx:
            first = jax.tree.map(lambda a: a[0], op_params)
            fx.check("singulars_used", op.svd.singulars(first))
        sigma_y = float(algo.get("sigma_y", fx.config.get("sigma_y_cfg", 0.0)))
        y = measurement(fx, op, op_params, sigma_y)
        name = model_name(fx.config.get("model", {}).get("file"), "adm_tiny")
        fn, params, _ = fx.model(name, model_dir)
        sample = get_sampler("reddiff")(
            fn, sched, operator=op, image_shape=shape,
            denoise_term_weight=algo.get("denoise_term_weight", "linear"),
            batch_coupled=coupled, dtype=fx.jdtype, keep_trajectory=True, **hp,
        )  # fmt: skip
        noise = {k: fx.jnp(swap01(fx.nhwc(k))) for k in ("noise_x0", "noise_xt")}
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample))(params, keys, y, op_params, None, {"noise": noise})
        traj = jax.tree.map(swap01, res.trajectory)
        mu0 = jax.vmap(op.svd.H_pinv)(op_params, y)
        grads = fx.nhwc("grad")
        adam_jax = [optax_adam(grads[:, i], mu_ref[0, i], hp["lr"]) for i in range(b)]
    f64 = task.get("runs", {}).get(f"b{b}", {}).get("f64_replay", {})
    mu = np.concatenate([np.asarray(mu0)[None], traj["mu"]])
    tol_mu = ATOL_MU, RTOL_MU
    fx.check("mu", mu, *tol_mu, nhwc=True, per_step=True, scale=np.abs(mu_ref).max(),
             f64=f64_level(f64, "mu"))  # fmt: skip
    fx.check("sample", res.x0, *tol_mu, nhwc=True, scale=np.abs(mu_ref).max(),
             f64=f64_level(f64, "sample"))  # fmt: skip
    for k, atol in ATOL.items():
        fx.check(k, traj[k], atol, nhwc=True, per_step=True, f64=f64_level(f64, k))
    for k in ("loss_obs", "loss_noise"):
        fx.rel(k, traj[k][:, 0], RTOL_LOSS, ATOL_LOSS)
    fx.check("loss", traj["loss"][:, 0], ATOL_LOSS_TOTAL)
    for k in ("snr_inv", "w_t"):
        fx.rel(k, traj[k][:, 0], RTOL_WEIGHT)
    steps = len(sched.timestep_map)
    fx.exact("adam_step", np.arange(1, steps + 1, dtype=np.float64))
    fx.check("v_t", np.full(steps, hp["obs_weight"]), 0.0)
    # Adam alone, teacher-forced on the recorded gradients (float32 rounding only)
    adam_torch = [torch_adam(grads[:, i], mu_ref[0, i], hp["lr"]) for i in range(b)]
    for j, k in enumerate(("exp_avg", "exp_avg_sq", "mu")):
        ref = mu_ref[1:] if k == "mu" else fx.arrays[k]
        ref = ref if k == "mu" else np.moveaxis(ref, -3, -1)
        for impl, out in (("optax", adam_jax), ("torch", adam_torch)):
            got = np.stack([a[j] for a in out], 1)
            fx.check(k, got, 0.0, RTOL_ADAM, ref=ref, key=f"adam_{impl}_{k}")
    extra = {"batch": b, "batch_coupled": coupled, **hp}
    if f64:
        extra["reference_f64_replay_max_abs_diff"] = {
            k: f64_max(v) for k, v in f64.items() if isinstance(v, list) and v
        }
    return fx.report("reddiff", **extra)
