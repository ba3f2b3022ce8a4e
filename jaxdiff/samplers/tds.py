"""TDS, twisted diffusion sampler (Wu, Trippe, Naesseth, Blei, Cunningham, "Practical and
asymptotically exact conditional sampling in diffusion models", NeurIPS 2023; checked against
probabilists/azula azula/guidance/tds.py `TDSSampler`; the twist is the authors' image code's,
blt2114/twisted_diffusion_sampler image_exp/image_diffusion/feynman_kac_image_ddpm.py
`_compute_twisted_step`; docs/methods.md).

Sequential Monte Carlo over N particles (a leading axis inside one image's sample function,
samplers/particles.py) whose proposal and weights are twisted by a DPS-style potential:

    x0_hat    = x0(x_t, eps_theta(x_t)),  s_t^2 = (1 - abar_t) / abar_t
    log p~_t  = -||y - A x0_hat||^2 / (2 v_t),  v_t = sigma^2 + s_t^2 tausq / (s_t^2 + tausq)
    g         = d log p~_t / d x_t                           (a VJP through the network)
    log w    += log p~_t;  resample by w                     (every step, azula)
    q(x_s | x_t, x) = N(sqrt(abar_s) x + c2 eps(x_t, x), c1^2 I)   (the DDPM step, eta 1)
    x_s ~ q(. | x_t, x0_hat + s_t^2 sqrt(abar_t) g)          (azula: x_hat + sigma_t^2/alpha_t g)
    log w     = log q(x_s | x_t, x0_hat) - log q(x_s | x_t, x0_y) - log p~_t

v_t is the authors' pred_xstart_var_type 6 ((s^2 tausq) / (s^2 + tausq), `tausq` 0.12 in
run_image.py) plus the measurement variance sigma^2 (their image tasks are noiseless; azula
leaves the twist to the caller and passes it sigma_t / alpha_t = s_t). The log ratio of the two
Gaussians is computed in closed form, -(|d|^2 / 2 + d.u) / c1^2 with d the difference of their
means and u = x_s - loc_y the returned sample's offset, rather than as a difference of two
log-densities of order 1e6 (azula's float32 subtraction).
The last step goes to abar = 1, where the proposal is a point mass and no weight can correct
its twist: the particles, resampled by that step's weights (which end in p~_0, about the
likelihood there), return their x0_hat (azula, `official=True`, returns x0_hat moved by the
twist's gradient, unweighted: a DPS step that nothing corrects). The weights after the last
step are uniform.
The twisted x0 = x0_hat + s_t^2 sqrt(abar_t) g is clamped to [-1, 1] before it makes the
proposal mean (`clip_twisted`, default on: the authors' `_compute_twisted_step_helper`,
clip_twisted: true in mnist_model_and_diffusion_conf.yml; azula does not, `official=True`). The
weights use the clamped mean, so the proposal stays exactly corrected. Without it the shift
s_t^2 / v_t * A^T r grows as 1 / abar_t at the first steps (about 2e5 per unit of residual at
abar 4e-5): an unclamped x0_hat of a prior that is not exact there sends the particles to 1e3,
and the feedback to inf within a few steps (NaN at step 12 of 20 on the demo prior, box).
hparams (traced): tausq, sigma. Static: num_particles, resampling ("multinomial", azula's
torch.multinomial), estimator ("draw": one particle; "mean": their average), clip_denoised,
clip_twisted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import particles as pt
from jaxdiff.samplers.base import initial_x, register_sampler
from jaxdiff.samplers.common import (
    check_measurement,
    noise_sigma,
    predict_x0,
    resolve_hparams,
    resolve_image_shape,
)

NUM_PARTICLES = 16


def _nfe(num_steps: int, options: dict) -> int:
    """One forward pass (and its VJP) per particle per step."""
    return int(num_steps) * int(options.get("num_particles", NUM_PARTICLES))


@register_sampler(
    "tds",
    needs=("operator", "measurement"),
    hparams={"tausq": 0.12, "sigma": None},
    ranges={"tausq": "(0, 1e6]", "sigma": "[0, 2]"},
    nfe=_nfe,
    grad=True,
)
def make_tds(
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
    official: bool = False,
    clip_denoised: bool = False,
    clip_twisted: bool = True,
    remat: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"tausq", "sigma"}, replay=None)`.

    replay: {"x_T": (N,H,W,C), "noise": {"z": (K,N,H,W,C), "u": (K,N), "ancestors": (K,N)}}
    (recorded ancestor indices >= 0 replace the uniforms' inverse CDF). The trajectory records
    log_p (each particle's twist, after resampling), ancestors, x0_hat and x0_y (resampled).
    `sample.update(params, x, k, z, logw, y, op_params, hparams)` is one step alone.
    """
    if operator is None or not hasattr(operator, "apply"):
        raise ValueError("tds: needs an Operator (the forward model A)")
    n = pt.check_options("tds", num_particles, resampling, estimator)
    if defaults["sigma"] is None:
        defaults = {**defaults, "sigma": noise_sigma(noise) or 0.0}
    forward = operator.apply
    shape = resolve_image_shape(image_shape, operator, None, "tds")
    steps = np.arange(schedule.num_steps)[::-1]

    def draw(key, x):
        k_z, k_u = jax.random.split(key)
        return {"z": jax.random.normal(k_z, x.shape, x.dtype), **pt.resample_draws(k_u, n)}

    def update(params, x, k, z, logw, y, op_params, h):
        tausq, sigma = h["tausq"].astype(dtype), h["sigma"].astype(dtype)

        def twist(x_in):
            pred = predict_x0(
                model_fn, params, schedule, x_in, k, clip_denoised=clip_denoised, remat=remat
            )
            a_t = pred["c"]["alphas_cumprod"]
            s2 = (1 - a_t) / a_t
            var = sigma**2 + s2 * tausq / (s2 + tausq)
            r = y - forward(op_params, pred["x0"])
            return -0.5 * jnp.sum(r * r) / var, pred

        (log_p, pred), g = jax.vmap(jax.value_and_grad(twist, has_aux=True))(x)
        c = jax.tree.map(lambda a: a[0], pred["c"])
        (x, x0, log_p, g), _, anc, e = pt.resample(
            (x, pred["x0"], log_p, g), logw + log_p, z, resampling
        )
        # gamma_t = (1 - abar) / sqrt(abar) from the float64-made tables
        gamma = c["sqrt_one_minus_alphas_cumprod"] * c["sqrt_recipm1_alphas_cumprod"]
        x0_y = x0 + gamma * g
        if clip_twisted and not official:  # the authors' clip_twisted: true (not azula's)
            x0_y = jnp.clip(x0_y, -1.0, 1.0)

        # the DDPM step q(x_s | x_t, x) = N(coef1 x + coef2 x_t, var) with the float64-made
        # tables (azula's alpha_s x + sigma_s sqrt(tau) eps; 1 - abar_s in float32 would lose
        # four digits at the last steps)
        coef1, var = c["posterior_mean_coef1"], c["posterior_variance"]
        c1 = jnp.sqrt(var)

        def loc(x0_):
            return coef1 * x0_ + c["posterior_mean_coef2"] * x

        loc_y = loc(x0_y)
        x_next = loc_y + c1 * z["z"]
        if not official:  # the last step (abar_s = 1) returns the resampled x0_hat
            x_next = jnp.where(c1 > 0, x_next, x0)
        # log q(x_s | loc) - log q(x_s | loc_y) at the x_s returned (u: its rounded offset)
        # (the means differ by the posterior-mean coefficient of x0 times the shift: no
        # cancellation of the two eps terms)
        d = (coef1 * (x0_y - x0)).reshape(n, -1)
        u = (x_next - loc_y).reshape(n, -1)
        safe = jnp.where(var > 0, var, 1.0)
        log_ratio = -(0.5 * jnp.sum(d * d, 1) + jnp.sum(d * u, 1)) / safe
        logw_next = jnp.where(c1 > 0, log_ratio - log_p, jnp.zeros_like(log_p))
        record = {"log_p": log_p, "ancestors": anc, "x0_hat": x0, "x0_y": x0_y}
        return x_next.astype(dtype), logw_next, e, record

    def prepare(y, op_params, hparams):
        h = resolve_hparams(defaults, hparams, "tds")
        if y is None:
            raise ValueError("tds: needs the measurement y")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jnp.zeros(shape, dtype), y, "tds")
        return h, y

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h, y = prepare(y, op_params, hparams)
        x_T, k_loop = initial_x(key, replay, (n, *shape), dtype, "tds")

        def step(x, logw, k, z, state):
            x_next, logw_next, e, record = update(params, x, k, z, logw, y, op_params, h)
            return x_next, logw_next, state, e, record

        return pt.particle_chain(
            step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="tds",
            estimator=estimator, draw=draw,
        )  # fmt: skip

    def one_step(params, x, k, z, logw, y, op_params=None, hparams=None):
        h, y = prepare(y, op_params, hparams)
        return update(params, jnp.asarray(x, dtype), k, z, logw, y, op_params, h)

    sample.update = one_step
    return sample
