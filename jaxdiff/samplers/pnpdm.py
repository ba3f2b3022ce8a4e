"""PnP-DM, plug-and-play diffusion models by split Gibbs sampling (Wu et al., NeurIPS 2024;
official code zihuiwu/PnP-DM-public, pnpdm/samplers/pnp_edm/pnp_edm.py PnPEDM and
denoiser_edm.py Denoiser_EDM; docs/methods.md). Alternating, over K iterations with the annealed
coupling rho_k = max(rho rho_decay^k, rho_min):

    likelihood step  z ~ p(z | x, y) ∝ N(y; A z, sigma^2) N(z; x, rho_k^2)
                     (linear A: exact Gaussian, operators.proximal.gaussian_posterior_sampler;
                      nonlinear A: `langevin_steps` Langevin steps from z = x, as the code's
                      phase_retrieval.proximal_generator)
    prior step       x ~ p(x | z), z = x + rho_k n: the EDM sampler (Euler, 'edm' sigma grid)
                     from noise level rho_k to 0 on the VP prior read as a denoiser
                     (jaxdiff.diffusion.edm: D(x; s) = x - s eps(c_in x, c_noise)):
                     x <- x + (t' - t) lmbd (x - D(x; t)) / t  [+ sqrt(t - t') sqrt(2 t) n]
                     mode "sde" (lmbd 2, noise on every step but the one to t = 0) or "ode"
                     (lmbd 1, no noise): the code's edm_sde / edm modes.

hparams (traced): rho (the initial coupling, 10 in commands.sh), rho_decay (0.9), rho_min
(0.3 for the linear tasks, 0.1 for the nonlinear ones). The result is the last x (the code's
samples[-1]; its posterior mean over the post-burn-in iterations is the trajectory's x).

`official=True` starts the prior step as the code does: at the first grid level BELOW rho_k,
t_{i0} < rho_k, with z taken as if its noise level were t_{i0} (the grid step from rho_k to t_{i0}
is skipped). By default one Euler step runs from rho_k itself down to t_{i0} first (one more
network call per iteration), so the prior step starts at z's real noise level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import annealing, edm
from jaxdiff.operators.pinv import make_pinv
from jaxdiff.operators.proximal import gaussian_posterior_sampler
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import (
    as_forward,
    check_measurement,
    noise_sigma,
    resolve_hparams,
    resolve_image_shape,
)

MODES = ("sde", "ode")
INITS = ("zeros", "random", "pinv")


def _nfe(num_steps: int, options: dict) -> int:
    """At most prior_steps (+ 1 for the start step) network calls per iteration."""
    k = options.get("iterations") or num_steps
    extra = 0 if options.get("official") else 1
    return int(k) * (int(options.get("prior_steps", 100)) + extra)


@register_sampler(
    "pnpdm",
    needs=("operator", "measurement"),
    hparams={"rho": 10.0, "rho_decay": 0.9, "rho_min": 0.3},
    ranges={"rho": "(0, 1000]", "rho_decay": "(0, 1]", "rho_min": "[0, 1000]"},
    nfe=_nfe,
)
def make_pnpdm(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    iterations: int | None = None,
    prior_steps: int = 100,
    mode: str = "sde",
    edm_rho: float = 7.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    net_sigma_range: tuple | None = None,
    sigma: float | None = None,
    init: str = "zeros",
    official: bool = False,
    langevin_steps: int = 100,
    langevin_step_size: float = 1e-4,
    cg_iters: int = 50,
    vp_beta_min: float = annealing.VP_BETA_MIN,
    vp_beta_d: float = annealing.VP_BETA_D,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"rho", "rho_decay", "rho_min"}, replay=None)`.

    iterations: K (default the schedule's step count); prior_steps: N of the EDM grid between
    sigma_min and sigma_max (EDM's 0.002 / 80, clipped to the network's VP range
    `net_sigma_range`, default edm.vp_sigma_range()); sigma: the measurement noise std (default
    the noise model's); init: x's start ("zeros": the code's deblurring and SVD super-resolution
    tasks, "pinv": A^+ y (its LinearSVDOperator default, overridden by every linear task it
    runs), "random": N(0, I), its phase retrieval). replay: {"x_T" (random
    init), "noise": {"lik": (K,H,W,C), "lik_y": (K, *y), "prior": (K, N+1, H,W,C) (slot 0 the
    start step, slot i+1 grid step i), "langevin": (K, L, H,W,C)}}. Trajectory: z, x, rho,
    i_start per iteration.
    """
    if mode not in MODES:
        raise ValueError(f"pnpdm: mode must be one of {MODES}, got {mode!r}")
    if init not in INITS:
        raise ValueError(f"pnpdm: init must be one of {INITS}, got {init!r}")
    forward = as_forward(operator)
    if forward is None:
        raise ValueError("pnpdm: needs an operator (the forward model A)")
    sigma_y = noise_sigma(noise) if sigma is None else float(sigma)
    if sigma_y is None or not sigma_y > 0:
        raise ValueError(
            "pnpdm: needs the measurement noise std > 0 (a Gaussian noise model or sigma=)"
        )
    shape = resolve_image_shape(image_shape, operator, None, "pnpdm")
    if iterations is None:
        iterations = schedule.num_steps
    k_iters, n = int(iterations), int(prior_steps)
    if k_iters < 1 or n < 2:
        raise ValueError(f"pnpdm: need iterations >= 1 and prior_steps >= 2, got {k_iters}, {n}")
    linear = bool(getattr(operator, "linear", False))
    if linear:
        lik_sample, _ = gaussian_posterior_sampler(operator, cg_iters)
    elif init == "pinv":
        raise ValueError("pnpdm: init='pinv' needs a linear operator")
    pinv = make_pinv(operator) if init == "pinv" else None
    net_lo, net_hi = net_sigma_range or edm.vp_sigma_range(vp_beta_d, vp_beta_min)
    s_lo, s_hi = max(float(sigma_min), float(net_lo)), min(float(sigma_max), float(net_hi))
    t = edm.edm_sigma_steps(n, s_lo, s_hi, edm_rho)  # (N + 1,), t_N = 0, float64
    np_dtype = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    lmbd = 2.0 if mode == "sde" else 1.0
    m = int(getattr(schedule, "num_train_timesteps", annealing.VP_M))
    edm.check_vp_schedule(schedule, vp_beta_min, vp_beta_d, m, "pnpdm")
    tb = {
        "t": t.astype(np_dtype),
        "c_in": annealing.vp_input_scale(t[:n], np_dtype).astype(np_dtype),
        "c_noise": annealing.vp_timestep(t[:n], vp_beta_min, vp_beta_d, m, np_dtype),
        "sigma": t[:n].astype(np_dtype),  # VPPrecond's sigma.to(float32)
        "coef": (lmbd / t[:n]).astype(np_dtype),
        "dt": (t[1:] - t[:n]).astype(np_dtype),
        "n_scale": np.sqrt(2 * t[:n]).astype(np_dtype),
        "n_step": np.sqrt(t[:n] - t[1:]).astype(np_dtype),
        "noisy": np.array([mode == "sde" and i != n - 1 for i in range(n)]),
    }
    y_shape = tuple(operator.output_shape()) if hasattr(operator, "output_shape") else shape

    def draw(key, x):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        normal = lambda k, s: jax.random.normal(k, s, x.dtype)  # noqa: E731
        return {
            "lik": normal(k1, x.shape),
            "lik_y": normal(k2, y_shape),
            "prior": normal(k3, (n + 1, *x.shape)),
            "langevin": normal(k4, (langevin_steps if not linear else 0, *x.shape)),
        }

    def draw_lazy(key, x):
        """The same draws, the per-Euler-step and Langevin ones left as keys unfolded one step
        at a time (memory O(image) instead of O(N images) per iteration and image)."""
        full = draw(key, x)  # lik / lik_y values; XLA drops the unused big arrays
        k3, k4 = jax.random.split(key, 4)[2:]
        return {**full, "prior": jax.random.key_data(k3), "langevin": jax.random.key_data(k4)}

    def unfold(draws, i, like):
        """Draw i of a replayed stack, or the i-th normal of a lazy key."""
        if jnp.issubdtype(draws.dtype, jnp.floating):
            return draws[i]
        k = jax.random.fold_in(jax.random.wrap_key_data(draws), i)
        return jax.random.normal(k, like.shape, like.dtype)

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        del valid  # nothing couples the images
        h = resolve_hparams(defaults, hparams, "pnpdm")
        rho0, decay, rho_min = (h[k].astype(dtype) for k in ("rho", "rho_decay", "rho_min"))
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "pnpdm")
        y = jnp.asarray(y, dtype)
        x_T, k_loop = initial_x(key, replay, shape, dtype, "pnpdm")
        if init == "zeros":
            x_init = jnp.zeros(shape, dtype)
        elif init == "pinv":
            x_init = pinv(op_params, y).astype(dtype)
        else:
            x_init = x_T
        tj = {k: jnp.asarray(v) for k, v in tb.items()}
        sig = jnp.asarray(sigma_y, dtype)

        def denoise(x, s, c_in, c_noise):
            return edm.vp_denoise(model_fn, params, x, s, c_in, c_noise)

        def euler(x, s, pre, coef, dt, n_scale, n_step, noisy, z):
            """x + dt lmbd (x - D(x; s)) / s [+ n_step n_scale z] (Denoiser_EDM's Euler step)."""
            x_next = x + dt * (coef * x - coef * denoise(x, s, *pre))
            return x_next + jnp.where(noisy, n_step * (n_scale * z), jnp.zeros_like(z))

        def prior_step(zx, rho, zs):
            i_start = jnp.argmax(tj["t"] < rho)  # the first grid level below rho (t_N = 0)
            x = zx
            if not official:  # one Euler step from rho itself down to t[i_start]
                t0 = tj["t"][i_start]
                pre = edm.vp_precond(rho, vp_beta_d, vp_beta_min, m)
                x = euler(
                    x,
                    rho,
                    pre,
                    lmbd / rho,
                    t0 - rho,
                    jnp.sqrt(2 * rho),
                    jnp.sqrt(rho - t0),
                    (mode == "sde") & (t0 > 0),
                    unfold(zs, 0, x),
                )

            def grid(x, i):
                def run(x):
                    pre = (tj["c_in"][i], tj["c_noise"][i])
                    return euler(
                        x,
                        tj["sigma"][i],
                        pre,
                        tj["coef"][i],
                        tj["dt"][i],
                        tj["n_scale"][i],
                        tj["n_step"][i],
                        tj["noisy"][i],
                        unfold(zs, i + 1, x),
                    )

                return jax.lax.cond(i >= i_start, run, lambda x: x, x), None

            x, _ = jax.lax.scan(grid, x, jnp.arange(n))
            return x, i_start

        def likelihood(x, rho, zd):
            if linear:
                return lik_sample(op_params, y, x, sig, rho, zd["lik"], zd["lik_y"])
            gamma = jnp.asarray(langevin_step_size, dtype)

            def data_fit(v):
                r = forward(op_params, v) - y
                return jnp.sum(r * r) / (2 * sig**2)

            def lstep(zv, eps):
                g = jax.grad(data_fit)(zv)
                return zv - gamma * g - (gamma / rho**2) * (zv - x) + jnp.sqrt(
                    2 * gamma
                ) * eps, None

            idx = jnp.arange(langevin_steps)
            z, _ = jax.lax.scan(lambda v, j: lstep(v, unfold(zd["langevin"], j, v)), x, idx)
            return z

        def step(x, k, zd, state):
            rho = jnp.maximum(rho0 * decay ** jnp.asarray(k, dtype), rho_min)
            z = likelihood(x, rho, zd)
            x_new, i_start = prior_step(z, rho, zd["prior"])
            record = {"z": z, "rho": rho, "i_start": i_start}
            return x_new.astype(dtype), state, record

        lazy = (replay or {}).get("noise") is None
        return chain(step, x_init, np.arange(k_iters), key=k_loop, replay=replay, loop=loop,
                     label="pnpdm", draw=draw_lazy if lazy else draw)  # fmt: skip

    sample.sigma_steps = t
    return sample
