"""Latent DAPS: DAPS's decoupled annealing in the latent space of a latent diffusion prior (Zhang
et al., CVPR 2025; zhangbingliang2019/DAPS sampler.py LatentDAPS, cores/mcmc.py,
forward_operator/__init__.py LatentWrapper; docs/methods.md), one image at a time.

Latent state z = z0 + sigma n on DAPS's annealing grid (samplers/daps_steps.py); step i, at
s = sigma_i:

    z0_hat = Euler PF-ODE from s to ode_sigma_min with D(z; t) = z - t eps(c_in z, c_noise(t))
    MCMC on p(z0 | z_t, y) ~ N(z0; z0_hat, s^2) exp(-||A(D(z0)) - y||^2 / tau^2) from z0_hat,
        the data gradient taken through the decoder D and clamped elementwise to
        [-grad_clip, grad_clip] (LatentWrapper.gradient clamps at 1; grad_clip=None: no clamp);
        Langevin or damped HMC (mc_algo; the official latent configs use HMC)
    z_t <- z0_y + sigma_{i+1} n          (also at the last step, where sigma_N = 0)

result.x0 is D(z) of the last z (the official sample is decoded so). The network timestep of a
noise level (`timestep_map`): "trained" (default) reads the prior's own alphas_cumprod; "vp" is
the official code's VPPrecond map of the continuous VP-SDE (beta_min 0.1, beta_d 19.9), which it
applies to LDMs trained on another schedule (sigma 10 -> 675 where the LDM's table has 737):
the option exists for parity. Draws of a step: {"velocity" (HMC), "mcmc": (L, ...), "renoise"},
in the official order (HMC's velocity, the L update draws, the re-noise draw).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import annealing
from jaxdiff.samplers import daps_steps
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import as_forward, check_measurement, resolve_hparams
from jaxdiff.samplers.latent_common import decoded

LABEL = "latent_daps"


def _nfe(num_steps: int, options: dict) -> int:
    """One UNet call per Euler step of each annealing step's ODE solve (the decoder runs forward
    and backward once per MCMC update, and once at the end)."""
    n = options.get("annealing_steps") or num_steps
    return int(n) * int(options.get("ode_steps", 2))


@register_sampler(
    LABEL,
    needs=("operator", "measurement", "latent_prior"),
    # configs/task/down_sampling.yaml, group "ldm" (the official LDM super-resolution values)
    hparams={"lr": 1.35e-4, "tau": 0.01, "lr_min_ratio": 0.023, "momentum": 0.86},
    ranges={"lr": "(0, 0.01]", "tau": "(0, 10]", "lr_min_ratio": "(0, 1]", "momentum": "[0, 1)"},
    nfe=_nfe,
    grad=False,
)
def make_latent_daps(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    latent,
    image_shape=None,
    annealing_steps: int | None = None,
    sigma_max: float = 10.0,
    sigma_min: float = 0.1,
    rho: float = 7.0,
    ode_steps: int = 2,
    ode_sigma_min: float = 0.001,
    ode_rho: float = 7.0,
    mcmc_steps: int = 24,
    mc_algo: str = "hmc",
    grad_clip: float | None = 1.0,
    timestep_map: str = "trained",
    vp_beta_min: float = annealing.VP_BETA_MIN,
    vp_beta_d: float = annealing.VP_BETA_D,
    record_inner: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"lr", "tau", "lr_min_ratio", "momentum"},
    replay, valid)`; result.x0 is the decoded image.

    Static options (official names in docs/methods.md): annealing_steps (default: the
    schedule's respaced step count), sigma_max / sigma_min / rho, ode_steps / ode_sigma_min /
    ode_rho, mcmc_steps, mc_algo ("hmc" | "langevin"), grad_clip, timestep_map ("trained" |
    "vp", with vp_beta_min / vp_beta_d). replay: {"x_T": standard normal (h,w,c) (scaled by
    sigma_max), "noise": {"mcmc": (N, L, h,w,c), "renoise": (N, h,w,c)[, "velocity": (N,
    h,w,c)]}}. The trajectory records z0_hat and z0_y per step; `record_inner` also every ODE
    state / denoiser output, every MCMC iterate / gradient (raw and clamped) / loss / score /
    velocity, and the decoded x0_hat, x0_y and x_t (N (K + L) latents, 3 N images).
    """
    del noise  # the likelihood weight is tau (a traced hparam), not the noise model's sigma
    del image_shape  # the decoder's (latent.image_shape)
    forward = as_forward(operator)
    lshape, ishape = tuple(latent.latent_shape), tuple(latent.image_shape)
    if mc_algo not in daps_steps.MC_ALGOS:
        raise ValueError(f"{LABEL}: mc_algo {mc_algo!r}; known: {daps_steps.MC_ALGOS}")
    if grad_clip is not None and not float(grad_clip) > 0:
        raise ValueError(f"{LABEL}: grad_clip must be > 0 or None, got {grad_clip!r}")
    if annealing_steps is None:
        if schedule is None:
            raise ValueError(
                f"{LABEL}: pass annealing_steps (or a schedule whose respacing sets it)"
            )
        annealing_steps = schedule.num_steps
    n = daps_steps.count(annealing_steps, "annealing_steps", LABEL)
    k_ode = daps_steps.count(ode_steps, "ode_steps", LABEL)
    n_mcmc = daps_steps.count(mcmc_steps, "mcmc_steps", LABEL)
    sig, tables = daps_steps.build_tables(
        n, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho, ode_steps=k_ode,
        ode_sigma_min=ode_sigma_min, ode_rho=ode_rho, timestep_map=timestep_map,
        vp_beta_min=vp_beta_min, vp_beta_d=vp_beta_d,
        num_train_timesteps=int(getattr(schedule, "num_train_timesteps", annealing.VP_M)),
        train_alphas_cumprod=getattr(schedule, "train_alphas_cumprod", None),
        dtype=dtype, label=LABEL,
    )  # fmt: skip
    draw, draw_lazy = daps_steps.draw_fns(n_mcmc, mc_algo)

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # no batch coupling
        h = resolve_hparams(defaults, hparams, LABEL)
        h = {name: v.astype(dtype) for name, v in h.items()}
        if y is None:
            raise ValueError(f"{LABEL}: this sampler needs the measurement y")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(ishape, dtype), y, LABEL)
        noise = (replay or {}).get("noise")
        daps_steps.check_replay_noise(noise, mc_algo, LABEL)
        z_T, k_loop = initial_x(key, replay, lshape, dtype, LABEL)
        z_T = z_T * jnp.asarray(sig[0], dtype)  # prior_sigma = sigma_max (DAPS.get_start)
        tb = {name: jnp.asarray(t) for name, t in tables.items()}

        def data_grad(z):
            """The loss through the decoder, its gradient and the clamp (LatentWrapper)."""

            def loss_fn(z):
                r = forward(op_params, latent.decode(params, z)) - y
                return jnp.sum(r * r)

            loss, g = jax.value_and_grad(loss_fn)(z)
            raw = g
            if grad_clip is not None:
                g = jnp.clip(g, -float(grad_clip), float(grad_clip))
            return loss, g, ({"mcmc_data_grad_raw": raw} if record_inner else {})

        def step(z_t, i, d, state):
            z0hat, ode_rec = daps_steps.ode_solve(model_fn, params, z_t, tb, i, k_ode, LABEL)
            lr = daps_steps.step_size(h, tb, i)
            z0y, mcmc_rec = daps_steps.mcmc(
                data_grad, z0hat, z_t, tb["sigma_sq"][i], lr, h, d,
                algo=mc_algo, num_steps=n_mcmc, lazy=lazy,
            )  # fmt: skip
            z_next = z0y + d["renoise"] * tb["sigma_next"][i]
            record = {"z0_hat": z0hat, "z0_y": z0y, "lr": lr}
            if record_inner:
                record.update(ode_rec)
                record.update(mcmc_rec)
                record["mcmc_decoded"] = jax.vmap(lambda z: latent.decode(params, z))(
                    mcmc_rec["mcmc_x"]
                )
                for name, v in (("x0_hat", z0hat), ("x0_y", z0y), ("x_t", z_next)):
                    record[name] = latent.decode(params, v)
            return z_next, state, record

        lazy = noise is None
        out = chain(
            step, z_T, np.arange(n), key=k_loop, replay=replay, loop=loop, label=LABEL,
            draw=draw_lazy if lazy else draw,
        )  # fmt: skip
        return decoded(latent, params, out)

    sample.sigmas = sig
    sample.draw = draw
    sample.ode_grid = tables["ode_t"]
    sample.c_noise = tables["c_noise"]
    return sample
