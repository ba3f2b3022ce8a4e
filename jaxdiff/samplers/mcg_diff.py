"""MCG-diff: Monte Carlo guided diffusion (Cardoso, Janati el Idrissi, Le Corff & Moulines,
ICLR 2024; official code gabrielvc/mcg_diff mcg_diff/particle_filter.py `mcg_diff`, sgm.py
`generate_coefficients_ddim`, utils.py `get_taus_from_singular_values`; docs/methods.md).

Sequential Monte Carlo in the SVD basis of a linear H = U diag(s) V^T (`operator.svd`): the
particles are spectral vectors v = V^T x_t (N, D), the network is called on V v and its eps
brought back by V^T. With ybar = U^T y, sigma_y the noise std, kappa the paper's small variance
and, per observed coordinate i (s_i > 0), tau_i the grid time where sigma_y^2 abar = (1 - abar)
s_i^2 (argmin on the grid; every tau_i = grid[0] when sigma_y = 0) and
yhat_i = sqrt(abar_tau_i) ybar_i / s_i, one step t -> t' (grid neighbours, t > t') is

    m = DDIM mean(v, eps; eta), std = DDIM std (eta); r_i(t) = abar_t / abar_tau_i;
    q_i(t) = 1 - (1 - kappa) r_i(t)
    weights   log w = -1/2 sum_{i: t' >= tau_i} (m_i - yhat_i sqrt(r_i(t')))^2 / (std^2 + q_i(t'))
                      +1/2 sum_{i: t >= tau_i} (v_i - yhat_i sqrt(r_i(t)))^2 / q_i(t)
    resample  ancestors a ~ w; then per coordinate, with G = std^2 / (std^2 + q_i(t'))
      t' >= tau_i:  v'_i = G yhat_i sqrt(r_i(t')) + (1 - G) m_a,i + sqrt(q_i(t') G) z_i
      otherwise:    v'_i = m_a,i + std z_i
    below min tau (all coordinates inactive): plain DDIM, no resampling. The final log-weights
    are log N(y; s v_0, sigma_y^2) minus the last filtering potential (or minus the potential at
    grid[0] when min tau = grid[0]).

The chain runs on the schedule's respaced grid (`timestep_map`, ascending; the official grid is
linspace(0, T - 1, N).long(), the respacing "mcgdiff<N>") down to x at grid[0], N - 1 network
calls per particle. hparams (traced): eta (DDIM, official 1), kappa (gaussian_var, 1e-4), sigma
(sigma_y; default the noise model's). Static: num_particles (official 64), resampling
("multinomial", the official Categorical), estimator ("draw": the official picks one particle by
the final weights; "mean"). The image is V v clipped to [-1, 1] (the official script's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import gaussian
from jaxdiff.samplers import particles as pt
from jaxdiff.samplers.base import initial_x, register_sampler
from jaxdiff.samplers.common import check_measurement, noise_sigma, resolve_hparams


def _nfe(num_steps: int, options: dict) -> int:
    return (int(num_steps) - 1) * int(options.get("num_particles", NUM_PARTICLES))


NUM_PARTICLES = 64  # scripts/configs/mcg_diff/default.yaml N_particles


def ddim_coefficients(a_t, a_prev, eta):
    """sgm.generate_coefficients_ddim: (std, coeff_sample, coeff_score)."""
    std = eta * jnp.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    coeff_sample = jnp.sqrt(a_prev / a_t)
    coeff_score = jnp.sqrt(1 - a_prev - std**2) - coeff_sample * jnp.sqrt(1 - a_t)
    return std, coeff_sample, coeff_score


def tau_indices(abar_grid, s, var):
    """utils.get_taus_from_singular_values: per singular value, the grid index minimising
    |var abar - (1 - abar) s^2| (index 0 for every s when var = 0)."""
    d = var * abar_grid[None, :] - (1 - abar_grid)[None, :] * s[:, None] ** 2
    d = d * (var > 0)
    return jnp.argmin(jnp.abs(d), axis=1).astype(jnp.int32)


def mcg_diff_grid(num_steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """The official grid linspace(0, T - 1, N).long() (the respacing "mcgdiff<N>")."""
    from jaxdiff.diffusion.time_grids import mcgdiff

    return np.asarray(mcgdiff(num_steps, num_train_timesteps), np.int64)


def _loglik(x, mean, std, mask):
    """particle_filter.gauss_loglik over the coordinates in `mask` (no normalising constant)."""
    r = (x - mean) / jnp.clip(std, 1e-10, 1e10)
    return -0.5 * jnp.sum(jnp.where(mask, r * r, 0), axis=-1)


@register_sampler(
    "mcg_diff",
    needs=("operator", "linear", "svd", "measurement"),
    hparams={"eta": 1.0, "kappa": 1e-4, "sigma": None},
    ranges={"eta": "[0, 1]", "kappa": "(0, 1)", "sigma": "[0, 2]"},
    nfe=_nfe,
)
def make_mcg_diff(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    num_particles: int = NUM_PARTICLES,
    resampling: str = "multinomial",
    estimator: str = "draw",
    clip_output: bool = True,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"eta", "kappa", "sigma"}, replay=None)`.

    replay: {"x_T": (N, D) spectral initial particles, "noise": {"z": (K, N, D), "u": (K, N),
    "ancestors": (K, N) int (-1: from u)}} with K = num_steps - 1 transitions.
    """
    n = pt.check_options("mcg_diff", num_particles, resampling, estimator)
    svd = operator.svd
    shape = tuple(svd.image_shape) if image_shape is None else tuple(image_shape)
    if shape != tuple(svd.image_shape):
        raise ValueError(
            f"mcg_diff: image_shape {shape} but the operator's SVD is for {svd.image_shape}"
        )
    if schedule.num_steps < 2:
        raise ValueError("mcg_diff: needs a grid of at least 2 timesteps")
    if defaults.get("sigma") is None:
        defaults = {**defaults, "sigma": noise_sigma(noise) if noise is not None else 0.0}
    D, m = svd.size, svd.rank
    K = schedule.num_steps
    steps = np.arange(1, K)[::-1]  # transition k -> k - 1 on the grid
    abar_np = np.asarray(schedule.tables["alphas_cumprod"], np.float64)

    def draw(key, x):
        k_z, k_u = jax.random.split(key)
        return {"z": jax.random.normal(k_z, x.shape, x.dtype), **pt.resample_draws(k_u, n)}

    def decode(v, op_params):
        img = svd.V(op_params, v)
        return jnp.clip(img, -1, 1) if clip_output else img

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "mcg_diff")
        check_measurement(operator.apply, op_params, jnp.zeros(shape, dtype), y, "mcg_diff")
        eta, kappa = h["eta"].astype(dtype), h["kappa"].astype(dtype)
        sigma_y = h["sigma"].astype(dtype)
        var = sigma_y**2
        abar = jnp.asarray(abar_np, dtype)
        s = svd.singulars(op_params).astype(dtype)
        observed = svd.pad(s) != 0  # (D,)
        s_safe = jnp.where(s != 0, s, 1)
        ybar = svd.Ut(op_params, jnp.asarray(y, dtype))
        ti = svd.pad(tau_indices(abar, s, var))  # grid index of tau_i (0 beyond m: unused)
        ti = jnp.where(observed, ti, K)  # unobserved: never active
        a_tau = abar[jnp.clip(ti, 0, K - 1)]
        yhat = svd.pad(jnp.sqrt(a_tau[:m]) * ybar / s_safe)
        k_min = jnp.min(ti)  # grid index of the smallest tau
        x_T, k_loop = initial_x(key, replay, (n, D), dtype, "mcg_diff")

        def eps_of(v, k):
            c = schedule.gather(k, dtype)
            imgs = jax.vmap(lambda u: svd.V(op_params, u))(v)
            t = jnp.full((n,), c["timestep"], jnp.int32)
            out = model_fn(params, imgs, t)
            eps, _ = gaussian.split_model_output(out, shape[-1], schedule.variance_type)
            return jax.vmap(lambda e: svd.Vt(op_params, e))(eps.astype(dtype))

        def potential(v, k, a_k):
            """-gauss_loglik of the particles at grid index k (coordinates with t_k >= tau)."""
            r = a_k / a_tau
            return _loglik(v, yhat * jnp.sqrt(r), jnp.sqrt(1 - (1 - kappa) * r), ti <= k)

        def step(v, logw, k, z, state):
            c = schedule.gather(k, dtype)
            a_t, a_prev = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            std, cs, ce = ddim_coefficients(a_t, a_prev, eta)
            eps = eps_of(v, k)
            mean = cs * v + ce * eps
            prev_ll = potential(v, k, a_t)
            r = a_prev / a_tau
            active = ti <= k - 1
            denom = std**2 + 1 - (1 - kappa) * r
            log_z = _loglik(mean, yhat * jnp.sqrt(r), jnp.sqrt(denom), active)
            filtering = k - 1 >= k_min
            logw_step = jnp.where(filtering, log_z - prev_ll, jnp.zeros_like(prev_ll))
            anc = pt.ancestors(pt.normalize(logw_step), z, resampling)
            anc = jnp.where(filtering, anc, jnp.arange(n, dtype=jnp.int32))
            e = pt.ess(logw_step)
            m_a = mean[anc]
            gain = std**2 / jnp.clip(denom, 1e-10, 1e10)
            kal = (
                gain * yhat * jnp.sqrt(r)
                + (1 - gain) * m_a
                + jnp.sqrt((1 - (1 - kappa) * r) * gain) * z["z"]
            )
            v_new = jnp.where(active, kal, z["z"] * std + m_a)
            # the potential that ends the filtering, kept for the final weights
            state = jnp.where(k == k_min, prev_ll, state)
            last = k == 1
            ll_y = _loglik(s * v_new[:, :m], ybar, jnp.sqrt(var) * jnp.ones_like(ybar), True)
            final = jnp.where(k_min > 0, ll_y - state, -potential(v_new, 0, a_prev))
            logw_new = jnp.where(last, final, jnp.zeros_like(final))
            record = {"ancestors": anc, "log_weights_step": logw_step, "eps": eps, "mean": mean}
            return v_new, logw_new, state, e, record

        out = pt.particle_chain(
            step,
            x_T,
            steps,
            key=k_loop,
            replay=replay,
            loop=loop,
            label="mcg_diff",
            estimator=estimator,
            state=jnp.zeros((n,), dtype),
            draw=draw,
            decode=lambda v: decode(v, op_params),
        )
        return out

    return sample
