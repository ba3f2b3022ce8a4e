"""DAPS, decoupled annealing posterior sampling (Zhang et al., CVPR 2025; docs/methods.md),
as the official code (zhangbingliang2019/DAPS, sampler.py DAPS, cores/mcmc.py, cores/scheduler.py,
model/precond.py) computes it, one image at a time.

State x = x0 + sigma n (EDM/VE, unscaled); sigma_0 > ... > sigma_{N-1} > sigma_N = 0 is the
annealing grid (jaxdiff.diffusion.annealing). Annealing step i, s = sigma_i:

    x0_hat = Euler solve of the PF-ODE dx/dt = -t score(x; t) = (x - D(x; t)) / t from t = s down
             to ode_sigma_min on the poly-rho grid (K steps, K model calls; x0_hat is the ODE
             state at ode_sigma_min, no final denoiser call, no clamp)
    D(x; t) = x - t eps(c_in x, c_noise)      (a VP eps-network read as a VE denoiser: VPPrecond)
    Langevin on p(x0 | x_t, y) ~ N(x0; x0_hat, s^2) exp(-||A(x0) - y||^2 / tau^2), from x0_hat:
        lr = lr0 (1 + i/(N+1) (lr_min_ratio - 1))
        score = -grad ||A(x) - y||^2 / tau^2 + (x_t - x)/s^2 + (x0_hat - x_t)/s^2
        x <- x + lr score + sqrt(2 lr) eps                         (L times)
    or, with mc_algo "hmc" (the repo's pixel_hmc task groups), from a velocity v ~ N(0, I) drawn
    once per annealing step: v <- m v + sqrt(lr) score + sqrt(2 (1 - m)) eps; x <- x + sqrt(lr) v
    (m = the `momentum` hparam; daps_steps.mcmc, shared with latent DAPS)
    x_t <- x0_y + sigma_{i+1} n        (also at the last step, where sigma_N = 0)

The gradient goes through the operator only (never through the network), so A may be nonlinear
and images never couple. Draws of a step: {"mcmc": (L, H, W, C), "renoise": (H, W, C)} (HMC: and
"velocity": (H, W, C), drawn first), in the official order (the L update draws, then the re-noise
draw); that is the replay layout, while a fresh run draws each update's noise inside the inner
scan from the step's key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import annealing, edm
from jaxdiff.samplers import daps_steps
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    as_forward,
    check_measurement,
    resolve_hparams,
    resolve_image_shape,
)


def _nfe(num_steps: int, options: dict) -> int:
    """One network call per Euler step of each annealing step's ODE solve."""
    n = options.get("annealing_steps") or num_steps
    return int(n) * int(options.get("ode_steps", 5))


@register_sampler(
    "daps",
    needs=("operator", "measurement"),
    # momentum: HMC only (MCMCSampler's default 0.9)
    hparams={"lr": 1e-4, "tau": 0.01, "lr_min_ratio": 0.01, "momentum": 0.9},
    # the Langevin step is stable while lr |A|^2 / tau^2 stays below ~2 (official: lr 1e-4 with
    # tau 0.01): a larger lr needs a larger tau; beyond, the loop's NaN guard marks the images
    ranges={"lr": "(0, 0.01]", "tau": "[0.01, 10]", "lr_min_ratio": "(0, 1]", "momentum": "[0, 1)"},
    nfe=_nfe,
)
def make_daps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    annealing_steps: int | None = None,
    sigma_max: float = 100.0,
    sigma_min: float = 0.1,
    rho: float = 7.0,
    ode_steps: int = 5,
    ode_sigma_min: float = 0.01,
    ode_rho: float = 7.0,
    mcmc_steps: int = 100,
    mc_algo: str = "langevin",
    vp_beta_min: float = annealing.VP_BETA_MIN,
    vp_beta_d: float = annealing.VP_BETA_D,
    record_inner: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"lr", "tau", "lr_min_ratio", "momentum"},
    replay, valid)`.

    Static options (official config names in docs/methods.md): annealing_steps (default: the
    schedule's respaced step count), sigma_max / sigma_min / rho (annealing grid), ode_steps /
    ode_sigma_min / ode_rho (the inner PF-ODE), mcmc_steps (MCMC updates per annealing step),
    mc_algo ("langevin" | "hmc"), vp_beta_min / vp_beta_d (VPPrecond's continuous VP-SDE, M =
    the model's training steps). replay: {"x_T": standard normal (H,W,C), scaled by sigma_max as
    the official get_start, "noise": {"mcmc": (N, L, H,W,C), "renoise": (N, H,W,C)[, "velocity":
    (N, H,W,C)]}}. The trajectory records x0_hat and x0_y per step, with `record_inner` also
    every ODE state / denoiser output and every MCMC iterate / data gradient / loss (/ HMC
    velocity) (memory: N (K + L) images).
    """
    del noise  # DAPS's likelihood weight is tau (a traced hparam), not the noise model's sigma
    forward = as_forward(operator)
    if forward is None:
        raise ValueError("daps: needs an operator (the forward model A)")
    if mc_algo not in daps_steps.MC_ALGOS:
        raise ValueError(f"daps: mc_algo {mc_algo!r}; known: {daps_steps.MC_ALGOS}")
    shape = resolve_image_shape(image_shape, operator, None, "daps")
    if annealing_steps is None:
        if schedule is None:
            raise ValueError("daps: pass annealing_steps (or a schedule whose respacing sets it)")
        annealing_steps = schedule.num_steps
    n = daps_steps.count(annealing_steps, "annealing_steps", "daps")
    k_ode = daps_steps.count(ode_steps, "ode_steps", "daps")
    n_mcmc = daps_steps.count(mcmc_steps, "mcmc_steps", "daps")
    m = int(getattr(schedule, "num_train_timesteps", annealing.VP_M))
    edm.check_vp_schedule(schedule, vp_beta_min, vp_beta_d, m, "daps")
    sig, tables = daps_steps.build_tables(
        n, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho, ode_steps=k_ode,
        ode_sigma_min=ode_sigma_min, ode_rho=ode_rho, timestep_map="vp", vp_beta_min=vp_beta_min,
        vp_beta_d=vp_beta_d, num_train_timesteps=m, dtype=dtype,
    )  # fmt: skip
    draw, draw_lazy = daps_steps.draw_fns(n_mcmc, mc_algo)

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # no batch coupling
        h = resolve_hparams(defaults, hparams, "daps")
        h = {name: v.astype(dtype) for name, v in h.items()}
        if y is None:
            raise ValueError("daps: this sampler needs the measurement y")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "daps")
        noise = (replay or {}).get("noise")
        daps_steps.check_replay_noise(noise, mc_algo, "daps")
        z_T, k_loop = initial_x(key, replay, shape, dtype, "daps")
        x_T = z_T * jnp.asarray(sig[0], dtype)  # prior_sigma = sigma_max (DAPS.get_start)
        tb = {name: jnp.asarray(t) for name, t in tables.items()}

        def data_grad(x):
            def loss_fn(x):
                r = forward(op_params, x) - y
                return jnp.sum(r * r)

            loss, g = jax.value_and_grad(loss_fn)(x)
            return loss, g, {}

        def step(x_t, i, z, state):
            x0hat, ode_rec = daps_steps.ode_solve(model_fn, params, x_t, tb, i, k_ode)
            lr = daps_steps.step_size(h, tb, i)
            x0y, mcmc_rec = daps_steps.mcmc(
                data_grad, x0hat, x_t, tb["sigma_sq"][i], lr, h, z,
                algo=mc_algo, num_steps=n_mcmc, lazy=lazy,
            )  # fmt: skip
            x_next = x0y + z["renoise"] * tb["sigma_next"][i]
            record = {"x0_hat": x0hat, "x0_y": x0y, "lr": lr}
            if record_inner:
                record.update(ode_rec)
                record.update(mcmc_rec)
            return x_next, state, record

        lazy = noise is None
        return chain(
            step,
            x_T,
            np.arange(n),
            key=k_loop,
            replay=replay,
            loop=loop,
            label="daps",
            draw=draw_lazy if lazy else draw,
        )

    sample.sigmas = sig
    sample.draw = draw
    sample.ode_grid = tables["ode_t"]
    sample.c_noise = tables["c_noise"]
    return sample
