"""RED-diff, variational posterior sampling (Mardani et al., ICLR 2024, "A Variational Perspective
on Solving Inverse Problems with Diffusion Models"; NVlabs/RED-diff algos/reddiff.py, see
docs/methods.md):

    mu_0 = H_pinv(y)                                            (no draw)
    step t (noisiest first), draws n0, n:
      x0_pred = mu + sigma_x0 n0
      x_t     = sqrt(a_t) x0_pred + sqrt(1 - a_t) n
      eps     = eps_theta(x_t, t)                               (detached: no UNet Jacobian)
      loss    = w_t mean((eps - n) x0_pred) + v mean(|y - H(x0_pred)|^2) / 2
      w_t     = grad_term_weight * f(sqrt(1 - a_t) / sqrt(a_t)), v = obs_weight
      mu      <- Adam(lr, betas (0.9, 0.99), eps 1e-8) step on d loss / d mu
    output: x0_pred of the LAST step (the last Adam update does not reach it, as in the code).

The chain's x is x0_pred; (mu, Adam state) ride in the loop's state. Means are per image by
default (the update of image i never depends on the others). `batch_coupled=True` divides by the
entry count of the whole batch as the official code does (`lax.psum` over the "batch" vmap axis of
`batched(...)`, padding with valid=False left out); Adam cancels that factor except in its eps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.samplers import common
from jaxdiff.samplers.base import chain, register_sampler
from jaxdiff.samplers.common import (
    as_forward,
    call_model,
    check_measurement,
    resolve_hparams,
    resolve_image_shape,
)

ADAM_BETAS = (
    0.9,
    0.99,
)  # algos/reddiff.py: torch.optim.Adam(betas=(0.9, 0.99)) ("original: 0.999")
ADAM_EPS = 1e-8  # torch.optim.Adam's default

# algos/reddiff.py: the denoise_term_weight transforms of snr_inv = sqrt(1 - a_t) / sqrt(a_t).
DENOISE_TERM_WEIGHTS = {
    "linear": lambda s: s,
    "sqrt": jnp.sqrt,
    "square": jnp.square,
    "log": lambda s: jnp.log(s + 1.0),
    "trunc_linear": lambda s: jnp.minimum(s, 1.0),
    "power2over3": lambda s: jnp.power(s, 2.0 / 3.0),
    "const": lambda s: jnp.ones_like(s),  # torch.pow(s, 0.0)
}

INITS = ("pinv", "adjoint", "zeros")
DRAWS = ("noise_x0", "noise_xt")  # per step, in the code's order


def adam(learning_rate):
    """The official optimiser as optax: Adam, betas (0.9, 0.99), eps 1e-8, no weight decay; the
    learning rate is injected (a traced hyperparameter carried in the state)."""
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
        learning_rate=learning_rate, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS
    )


def adam_moments(opt_state):
    """(exp_avg, exp_avg_sq) of the optax Adam state (torch's names)."""
    inner = opt_state.inner_state[0]
    return inner.mu, inner.nu


def pseudo_inverse(operator, init, image_shape, where: str):
    """The start mu_0 = init(op_params, y), as the code's H_pinv(y). "pinv": A^+ y from
    jaxdiff.operators.pinv (the SVD form's H_pinv when the operator has one, else conjugate
    gradients); "adjoint": A^T y (not a pseudo-inverse, only a start); "zeros"; or a function
    (op_params, y) -> image."""
    if callable(init):
        return init
    if init == "zeros":
        return lambda op_params, y: jnp.zeros(image_shape, jnp.result_type(y))
    if init not in INITS:
        raise ValueError(f"{where}: init must be one of {INITS} or a function, got {init!r}")
    name = getattr(operator, "name", type(operator).__name__)
    if not getattr(operator, "linear", False) or not hasattr(operator, "adjoint"):
        raise ValueError(
            f"{where}: init={init!r} needs a linear operator; {name!r} is not one "
            "(pass init='zeros' or a function (op_params, y) -> image)"
        )
    if init == "adjoint":
        return operator.adjoint
    try:
        from jaxdiff.operators.pinv import make_pinv
    except ImportError:  # pragma: no cover - pinv.py lands with the PiGDM work
        make_pinv = None
    if make_pinv is not None:
        return make_pinv(operator)  # the SVD pinv when op.svd exists, else CG on A^T A
    svd = getattr(operator, "svd", None)
    if svd is not None:
        return svd.H_pinv
    raise ValueError(
        f"{where}: operator {name!r} has no pseudo-inverse (no .svd); pass "
        "init='adjoint', init='zeros' or a function (op_params, y) -> image"
    )


@register_sampler(
    "reddiff",
    needs=("operator", "measurement"),
    hparams={"grad_term_weight": 0.25, "obs_weight": 1.0, "lr": 0.1, "sigma_x0": 0.0},
    ranges={
        "grad_term_weight": "[0, 10]",
        "obs_weight": "[0, 100]",
        "lr": "(0, 10]",
        "sigma_x0": "[0, 1]",
    },
)
def make_reddiff(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    image_shape=None,
    denoise_term_weight: str = "linear",
    batch_coupled: bool = False,
    init="pinv",
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams, replay=None, valid=True)`.

    hparams (traced): grad_term_weight (lambda), obs_weight (v), lr (Adam), sigma_x0 (the
    x0_pred perturbation); defaults from _configs/algo/reddiff.yaml. denoise_term_weight: a key of
    DENOISE_TERM_WEIGHTS. init: see `pseudo_inverse`. replay: {"noise": {"noise_x0": (K,H,W,C),
    "noise_xt": (K,H,W,C)}}; the trajectory records mu (after each Adam step), x_t, eps, grad,
    exp_avg, exp_avg_sq, the losses, snr_inv and w_t.
    """
    del noise  # the loss has no sigma_y: v = obs_weight weighs the data term directly
    forward = as_forward(operator)
    if forward is None:
        raise ValueError("reddiff: needs an operator (the forward model A)")
    if denoise_term_weight not in DENOISE_TERM_WEIGHTS:
        raise ValueError(
            f"reddiff: denoise_term_weight must be one of {sorted(DENOISE_TERM_WEIGHTS)}, "
            f"got {denoise_term_weight!r}"
        )
    weight_fn = DENOISE_TERM_WEIGHTS[denoise_term_weight]
    shape = resolve_image_shape(image_shape, operator, None, "reddiff")
    start = pseudo_inverse(operator, init, shape, "reddiff")
    steps = np.arange(schedule.num_steps)[::-1]

    def batch_sum(v, valid):
        return common.batch_sum(v, valid, "reddiff", "batch_coupled") if batch_coupled else v

    def model_eps(params, x_t, k):
        # the network's eps channels; learned-variance channels are unused (the code's [:, :3])
        out = call_model(model_fn, params, x_t, schedule.gather(k, dtype)["timestep"])
        c = x_t.shape[-1]
        if out.shape[:-1] != x_t.shape[:-1] or out.shape[-1] not in (c, 2 * c):
            raise ValueError(
                f"reddiff: the model maps an image {x_t.shape} to {out.shape}; expected "
                f"{c} (eps) or {2 * c} (eps and variance) channels"
            )
        return out[..., :c]

    def draw(key, x):
        k0, kt = jax.random.split(key)
        return {
            "noise_x0": jax.random.normal(k0, x.shape, x.dtype),
            "noise_xt": jax.random.normal(kt, x.shape, x.dtype),
        }

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        h = {k: v.astype(dtype) for k, v in resolve_hparams(defaults, hparams, "reddiff").items()}
        if y is None:
            raise ValueError("reddiff: needs the measurement y")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(shape, dtype), y, "reddiff")
        noise = (replay or {}).get("noise")
        if noise is not None and (not isinstance(noise, dict) or set(noise) != set(DRAWS)):
            raise ValueError(
                f"reddiff: replay['noise'] must be a dict with keys {DRAWS} (each (K, H, W, C)), "
                f"got {type(noise).__name__}"
                + (f" with keys {sorted(noise)}" if isinstance(noise, dict) else "")
            )
        valid = jnp.asarray(valid, bool)
        mu0 = jnp.asarray(start(op_params, y), dtype)
        if mu0.shape != shape:
            raise ValueError(f"reddiff: init gave an image of shape {mu0.shape}, expected {shape}")
        # the official means run over every entry of the batch; per image by default
        n_img = batch_sum(jnp.asarray(np.prod(shape), dtype), valid)
        n_obs = batch_sum(jnp.asarray(y.size, dtype), valid)
        opt = adam(h["lr"])

        def step(x, k, z, state):
            mu, opt_state = state
            a = schedule.gather(k, dtype)["alphas_cumprod"]
            n0, nt = z["noise_x0"], z["noise_xt"]
            x0_pred = mu + h["sigma_x0"] * n0
            x_t = jnp.sqrt(a) * x0_pred + jnp.sqrt(1 - a) * nt
            eps = jax.lax.stop_gradient(model_eps(params, x_t, k))
            snr_inv = weight_fn(jnp.sqrt(1 - a) / jnp.sqrt(a))
            w_t = h["grad_term_weight"] * snr_inv
            v_t = h["obs_weight"]

            def loss_fn(m):
                xp = m + h["sigma_x0"] * n0
                e_obs = y - forward(op_params, xp)
                loss_obs = jnp.sum(e_obs**2) / n_obs / 2
                loss_noise = jnp.sum((eps - nt) * xp) / n_img
                return w_t * loss_noise + v_t * loss_obs, (loss_obs, loss_noise)

            grad, (loss_obs, loss_noise) = jax.grad(loss_fn, has_aux=True)(mu)
            updates, opt_state = opt.update(grad, opt_state, mu)
            mu_new = optax.apply_updates(mu, updates)
            # a non-finite mu shows at this step (the loop freezes x and state at the last
            # finite step), not one step later through x0_pred
            x_new = jnp.where(jnp.all(jnp.isfinite(mu_new)), x0_pred, jnp.nan)
            loss_obs, loss_noise = batch_sum(loss_obs, valid), batch_sum(loss_noise, valid)
            exp_avg, exp_avg_sq = adam_moments(opt_state)
            record = {
                "mu": mu_new,
                "x_t": x_t,
                "eps": eps,
                "grad": grad,
                "exp_avg": exp_avg,
                "exp_avg_sq": exp_avg_sq,
                "loss_obs": loss_obs,
                "loss_noise": loss_noise,
                "loss": w_t * loss_noise + v_t * loss_obs,
                "snr_inv": snr_inv,
                "w_t": w_t,
            }
            return x_new, (mu_new, opt_state), record

        state = (mu0, opt.init(mu0))
        return chain(
            step,
            mu0,
            steps,
            key=key,
            replay=replay,
            loop=loop,
            label="reddiff",
            draw=draw,
            state=state,
        )

    return sample
