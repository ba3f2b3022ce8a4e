"""The pieces of a DAPS annealing step that the pixel and the latent variants share
(zhangbingliang2019/DAPS sampler.py DAPS / LatentDAPS, cores/mcmc.py, cores/scheduler.py,
model/precond.py; docs/methods.md): the tables of the annealing and PF-ODE grids, the Euler
solve of the PF-ODE with a VP eps-network read as a VE denoiser, the MCMC inner loop (Langevin
or damped HMC) on the Gaussian-approximated posterior of x0 given x_t and y, and the step's
draws. The state is x = x0 + sigma n (EDM/VE, unscaled); the methods' files hold the rest.

Timestep map (`timestep_map`): the network's (fractional) timestep for a noise level sigma.
"vp" is VPPrecond's continuous VP-SDE (beta_min 0.1, beta_d 19.9: the linear DDPM schedule
1e-4..0.02), which the official code applies to EVERY model, also LDMs trained on another
schedule; "trained" reads the model's own alphas_cumprod (the fractional index where its
log-sigma equals log sigma, linear in between, clamped to [0, T-1]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import annealing

MC_ALGOS = ("langevin", "hmc")
TIMESTEP_MAPS = ("vp", "trained")


def count(value, name: str, label: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{label}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def trained_timestep(sigma, train_alphas_cumprod) -> np.ndarray:
    """The fractional training step whose noise level is sigma (float64): the model's own
    sigma_k = sqrt((1 - abar_k) / abar_k), interpolated linearly in log sigma."""
    abar = np.asarray(train_alphas_cumprod, np.float64)
    log_s = 0.5 * np.log((1 - abar) / abar)
    if np.any(np.diff(log_s) <= 0):
        raise ValueError("the model's alphas_cumprod must decrease strictly")
    sig = np.maximum(np.asarray(sigma, np.float64), 1e-30)
    return np.interp(np.log(sig), log_s, np.arange(abar.size, dtype=np.float64))


def build_tables(
    n: int,
    *,
    sigma_max: float,
    sigma_min: float,
    rho: float,
    ode_steps: int,
    ode_sigma_min: float,
    ode_rho: float,
    timestep_map: str = "vp",
    vp_beta_min: float = annealing.VP_BETA_MIN,
    vp_beta_d: float = annealing.VP_BETA_D,
    num_train_timesteps: int = annealing.VP_M,
    train_alphas_cumprod=None,
    dtype=np.float32,
    label: str = "daps",
) -> tuple[np.ndarray, dict]:
    """(sigmas (N + 1,) with the last 0, per-step tables {sigma, sigma_next, sigma_sq, ode_t
    (N, K + 1), c_in, c_noise (N, K), ratio}) in `dtype`, as the official code rounds them."""
    if timestep_map not in TIMESTEP_MAPS:
        raise ValueError(f"{label}: timestep_map {timestep_map!r}; known: {TIMESTEP_MAPS}")
    np_dtype = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    sig = annealing.annealing_sigmas(n, sigma_max, sigma_min, rho, np_dtype)
    ode_t = annealing.ode_grids(sig[:n], ode_steps, ode_sigma_min, ode_rho, np_dtype)
    t_model = ode_t[:, :ode_steps]
    c_in = annealing.vp_input_scale(t_model, np_dtype).astype(np_dtype)
    if timestep_map == "vp":
        m = int(num_train_timesteps)
        c_noise = annealing.vp_timestep(t_model, vp_beta_min, vp_beta_d, m, np_dtype)
    else:
        if train_alphas_cumprod is None:
            raise ValueError(
                f"{label}: timestep_map 'trained' needs the model's schedule (a schedule with "
                "train_alphas_cumprod); pass one or timestep_map='vp'"
            )
        c_noise = trained_timestep(t_model, train_alphas_cumprod)
    ratio = np.arange(n) / (n + 1)  # i / Scheduler.num_steps (which counts the initial point)
    tables = {
        "sigma": sig[:n],
        "sigma_next": sig[1:],
        "sigma_sq": (sig[:n].astype(np.float64) ** 2).astype(np_dtype),
        "ode_t": ode_t,
        "c_in": c_in,
        "c_noise": np.asarray(c_noise).astype(np_dtype),
        "ratio": ratio.astype(np_dtype),
    }
    return sig, tables


def ode_solve(model_fn, params, x_t, tb: dict, i, num_steps: int, label: str = "daps"):
    """x0_hat: K Euler steps of dx/dt = (x - D(x; t)) / t on the step's grid ode_t[i] (the
    state at the last grid point; no final denoiser call, no clamp) and the records
    {"ode_x", "ode_denoised"} (K, ...). D(x; t) = x - t eps(c_in x, c_noise) (VPPrecond; the
    network's extra channels, a learned variance, are dropped)."""

    def denoise(x, c_in_k, c_noise_k, t):
        out = model_fn(params, (c_in_k * x)[None], c_noise_k[None])[0]
        if out.shape[:-1] != x.shape[:-1] or out.shape[-1] < x.shape[-1]:
            raise ValueError(f"{label}: the model maps {x.shape} to {out.shape}")
        return x + (-t) * out[..., : x.shape[-1]]

    def euler(x, k):
        t, t_next = tb["ode_t"][i, k], tb["ode_t"][i, k + 1]
        den = denoise(x, tb["c_in"][i, k], tb["c_noise"][i, k], t)
        score_term = t * ((den - x) / (t * t))  # sigma * score; d = -sigma * score
        return x + (t - t_next) * score_term, {"ode_x": x, "ode_denoised": den}

    return jax.lax.scan(euler, x_t, jnp.arange(num_steps))


def step_size(h: dict, tb: dict, i):
    """lr = lr0 (1 + i/(N+1) (lr_min_ratio - 1)) (MCMCSampler.get_lr with p = 1)."""
    return h["lr"] * (1 + tb["ratio"][i] * (h["lr_min_ratio"] - 1))


def mcmc(
    data_grad, x0hat, x_t, s_sq, lr, h: dict, draws: dict, *, algo: str, num_steps: int, lazy: bool
):
    """The MCMC inner loop from x0_hat on p(x0 | x_t, y) ~ N(x0_hat, s^2) exp(-L(x0) / tau^2)
    ('gaussian' prior solver; L = the data loss, `data_grad(x) -> (loss, grad, extra records)`).

        score = -grad / tau^2 + (x_t - x) / s^2 + (x0_hat - x_t) / s^2   (the official order)
        langevin: x <- x + lr score + sqrt(2 lr) eps
        hmc:      v <- m v + sqrt(lr) score + sqrt(2 (1 - m)) eps;  x <- x + sqrt(lr) v
                  (v drawn once per annealing step, before the updates; m = `momentum`)

    `draws`: {"mcmc": (L, ...) eps, or with `lazy` a key's data (each eps from fold_in(key, l)),
    "velocity": the HMC start}. Returns (x0_y, records over the L updates)."""
    tau_sq = h["tau"] * h["tau"]
    prior_score = (x0hat - x_t) / s_sq
    key = jax.random.wrap_key_data(draws["mcmc"]) if lazy else None
    hmc = algo == "hmc"
    sqrt_lr = jnp.sqrt(lr)
    noise_scale = jnp.sqrt(2 * (1 - h["momentum"])) if hmc else jnp.sqrt(2 * lr)

    def update(carry, eps):
        x, v = carry
        if lazy:  # eps is the update's index
            eps = jax.random.normal(jax.random.fold_in(key, eps), x.shape, x.dtype)
        loss, g, extra = data_grad(x)
        score = -g / tau_sq + (x_t - x) / s_sq + prior_score
        rec = {"mcmc_x": x, "mcmc_data_grad": g, "mcmc_loss": loss, "mcmc_score": score, **extra}
        if hmc:
            v = h["momentum"] * v + sqrt_lr * score + noise_scale * eps
            x_new = x + v * sqrt_lr
            rec["hmc_velocity"] = v
        else:
            x_new = x + lr * score + noise_scale * eps
        return (x_new, v), rec

    v0 = draws["velocity"] if hmc else jnp.zeros_like(x0hat)
    xs = jnp.arange(num_steps) if lazy else draws["mcmc"]
    (x0y, _), rec = jax.lax.scan(update, (x0hat, v0), xs)
    return x0y, rec


def draw_fns(num_mcmc: int, algo: str):
    """(draw, draw_lazy) of a step for `base.chain`: the full draws in the official order
    ({"velocity"} for HMC, {"mcmc": (L, ...), "renoise"}), or the same values with the L
    update draws left as a key the inner scan unfolds (memory O(image) per step)."""
    hmc = algo == "hmc"

    def keys(key):  # Langevin: the split of the pixel sampler's first version (same draws)
        return tuple(jax.random.split(key, 3)) if hmc else (*jax.random.split(key), None)

    def draw(key, x):
        k1, k2, k3 = keys(key)
        one = lambda l: jax.random.normal(jax.random.fold_in(k1, l), x.shape, x.dtype)  # noqa: E731
        out = {
            "mcmc": jax.vmap(one)(jnp.arange(num_mcmc)),
            "renoise": jax.random.normal(k2, x.shape, x.dtype),
        }
        if hmc:
            out["velocity"] = jax.random.normal(k3, x.shape, x.dtype)
        return out

    def draw_lazy(key, x):
        k1, k2, k3 = keys(key)
        out = {"mcmc": jax.random.key_data(k1), "renoise": jax.random.normal(k2, x.shape, x.dtype)}
        if hmc:
            out["velocity"] = jax.random.normal(k3, x.shape, x.dtype)
        return out

    return draw, draw_lazy


def check_replay_noise(noise, algo: str, label: str) -> None:
    want = {"mcmc", "renoise"} | ({"velocity"} if algo == "hmc" else set())
    if noise is not None and (not isinstance(noise, dict) or set(noise) != want):
        layout = '"mcmc": (N, L, ...), "renoise": (N, ...)'
        if algo == "hmc":
            layout += ', "velocity": (N, ...)'
        raise ValueError(
            f"{label}: replayed noise must be {{{layout}}}, got {jax.tree.map(jnp.shape, noise)}"
        )
