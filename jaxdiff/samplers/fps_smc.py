"""FPS-SMC: filtering posterior sampling with sequential Monte Carlo (Dou & Song, ICLR 2024;
official code ZehaoDou-official/FPS-SMC-2023 guided_diffusion/gaussian_diffusion.py
`p_sample_loop`, `p_mean_variance`, `DDIM.p_sample`, posterior_mean_variance.py
`EpsilonXMeanProcessor`; docs/methods.md).

Posterior sampling as Bayesian filtering: a noisy measurement sequence y_t is drawn backward
from y_{T-1} = A z by the DDIM-like bridge (c = c_rate, abar at the respaced index k)

    y_{k-1} = sqrt(abar_prev) y + sqrt((1 - c)(1 - abar_prev) / (1 - abar)) (y_k - sqrt(abar) y)
              + sqrt(c (1 - abar_prev)) A n_k,

and M particles are filtered against it. Start: x_{T-1} agrees with y_{T-1} on the observed
spectral coordinates (ybar / s) and is N(0, 1) elsewhere. Step k >= 1 (x0_hat clamped, eps the
network's, pv = c (1 - abar_prev), vd = sigma^2 abar, in the SVD basis of A = U diag(s) V^T):

    m_back = sqrt(abar_prev) x0_hat + sqrt((1 - c)(1 - abar_prev)) eps
    m      = (m_back + c' s ybar_k) / (1 + c' s^2),   c' = (pv + 1e-6) / vd
    x'     = m + sqrt(pv vd / (vd + pv s^2)) z        (per spectral coordinate)
    log w  = -||y_k - A x'||^2 / (2 sigma^2 abar_prev) - ||x' - m_back||^2 / (2 pv)
             + 1/2 (x' - m)^T (I / pv + diag(s^2) / vd) (x' - m)
    resample (every step); step 0: x = m_back (= x0_hat), no weights.

hparams (traced): c_rate (official 0.95), sigma (the code's fixed self.sigma = 0.05; default the
noise model's). Static: num_particles (official 5), resampling ("multinomial": the code's
random.choices), estimator ("draw": the code returns particle 0 after its last resampling, a
uniformly drawn particle; "mean"). The official inpainting branch is this update for a mask
(s in {0, 1}); its super-resolution and deblurring branches propose with one SVD form and weigh
with other operators (`fps_smc_official`: `official=True` with `official_operators`).

`official=True` (parity only) reproduces two things of the code. Its inpainting noise
c1 z - (c1 - c2) A z takes c2 expanded to the tiled measurement's (M, ...) shape, so each
proposal is M identical rows and every norm in the weights is M times too large: the
log-weights are multiplied by M (the weights raised to the power M). And its guided mean is
x - c/(c+1) A x with x = m_back + c A^T y and c ~ 1e7 at the top steps: float32 cancellation
leaves errors of order 0.1 on the observed pixels there (the stable form above is the
default); the code's float32 coefficients of float64 tables are used (from the factory's
c_rate and sigma, which are then fixed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import gaussian
from jaxdiff.samplers import particles as pt
from jaxdiff.samplers.base import register_sampler
from jaxdiff.samplers.common import (
    check_measurement,
    clip_inclusive,
    noise_sigma,
    resolve_hparams,
    resolve_image_shape,
)
from jaxdiff.samplers.fps_smc_official import make_official_svd_branch

NUM_PARTICLES = 5  # sample_condition.py --particle_size default


def _nfe(num_steps: int, options: dict) -> int:
    return (int(num_steps) - 1) * int(options.get("num_particles", NUM_PARTICLES))


def official_tables(schedule, defaults) -> dict:
    """The code's per-step coefficients: float64 numpy tables rounded to float32 as its
    extract_and_expand(...).float() does (c_rate and sigma concrete)."""
    c, sg = float(defaults["c_rate"]), float(defaults["sigma"] or 0.05)
    a = np.asarray(schedule.tables["alphas_cumprod"], np.float64)
    ap = np.asarray(schedule.tables["alphas_cumprod_prev"], np.float64)
    pv = (1 - ap) * c
    vd = a * sg * sg
    f = np.float32
    return {
        "coef": (1 / (vd / (pv + 1e-6))).astype(f),
        "c1": np.sqrt(pv).astype(f),
        "c2": np.sqrt(vd * pv / (vd + pv)).astype(f),
        "bridge1": np.sqrt((1 - c) * (1 - ap) / (1 - a)).astype(f),
        "bridge2": np.sqrt(ap).astype(f),
        "bridge3": np.sqrt(a).astype(f),
        "bridge4": (np.sqrt(c) * np.sqrt(1 - ap)).astype(f),
        "e3": np.sqrt(ap).astype(f),
        "e4": (np.sqrt(1 - ap) * np.sqrt(1 - c)).astype(f),
    }


@register_sampler(
    "fps_smc",
    needs=("operator", "linear", "svd", "measurement"),
    hparams={"c_rate": 0.95, "sigma": None},
    ranges={"c_rate": "(0, 1)", "sigma": "(0, 2]"},
    nfe=_nfe,
)
def make_fps_smc(
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
    clip_denoised: bool = True,
    official: bool = False,
    official_operators: dict | None = None,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams={"c_rate", "sigma"}, replay=None)`.

    replay: {"y_T": (H,W,C) the draw behind y_{T-1} = A y_T, "x_T": (N,H,W,C) the start's
    free coordinates, "y_noise_T": (H,W,C) the n of y_{T-2}, "noise": {"z": (K,N,H,W,C),
    "y_noise": (K,H,W,C), "u": (K,N), "ancestors": (K,N)}} over the K = num_steps - 1 steps
    (the step at k draws n_k for y_{k-1}; unused at k = 0). Parity only: "x_in" (K,N,H,W,C)
    and "y_in" (K,H,W,C) replace each step's input particles and y_k (teacher forcing);
    "weights_in": {"proposal", "mean_back"} (K,N,H,W,C) gives each step's weights of those
    (recorded as "log_weights_forced").

    official_operators (parity, with official=True): {"measure": the y sequence's and the
    likelihood's operator, "prev": the proposal density's}, with `operator` the code's SVD
    form: its super-resolution and deblurring branches (`fps_smc_official`).
    """
    n = pt.check_options("fps_smc", num_particles, resampling, estimator)
    svd = operator.svd
    shape = resolve_image_shape(image_shape, operator, None, "fps_smc")
    if tuple(shape) != tuple(svd.image_shape):
        raise ValueError(
            f"fps_smc: image_shape {shape} but the operator's SVD is for {svd.image_shape}"
        )
    if schedule.num_steps < 2:
        raise ValueError("fps_smc: needs at least 2 steps")
    if defaults.get("sigma") is None:
        sigma = noise_sigma(noise) if noise is not None else None
        defaults = {**defaults, "sigma": 0.05 if not sigma else sigma}
    m = svd.rank
    K = schedule.num_steps
    tab = official_tables(schedule, defaults) if official else None
    if official_operators is not None:
        if not official:
            raise ValueError(
                "fps_smc: official_operators reproduce the official code: official=True"
            )
        return make_official_svd_branch(
            model_fn, schedule, operator=operator, tables=tab, defaults=defaults, loop=loop,
            shape=tuple(shape), n=n, resampling=resampling, estimator=estimator,
            clip_denoised=clip_denoised, dtype=dtype, **official_operators,
        )  # fmt: skip
    steps = np.arange(K - 1)[::-1]  # k = K-2 .. 0; the top index K-1 only initialises

    def draw(key, x):
        k_z, k_y, k_u = jax.random.split(key, 3)
        return {
            "z": jax.random.normal(k_z, x.shape, x.dtype),
            "y_noise": jax.random.normal(k_y, x.shape[1:], x.dtype),
            **pt.resample_draws(k_u, n),
        }

    def get(name, replay, key, shp):
        v = (replay or {}).get(name)
        if v is None:
            return jax.random.normal(key, shp, dtype)
        if tuple(jnp.shape(v)) != tuple(shp):
            raise ValueError(
                f"fps_smc: replay {name} has shape {tuple(jnp.shape(v))}, expected {shp}"
            )
        return jnp.asarray(v, dtype)

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h = resolve_hparams(defaults, hparams, "fps_smc")
        check_measurement(operator.apply, op_params, jnp.zeros(shape, dtype), y, "fps_smc")
        c_rate, sigma = h["c_rate"].astype(dtype), h["sigma"].astype(dtype)
        s = svd.singulars(op_params).astype(dtype)
        s_full = svd.pad(s)
        observed = s_full != 0
        s_safe = jnp.where(observed, s_full, 1)
        ybar_meas = svd.Ut(op_params, jnp.asarray(y, dtype))
        k_yT, k_x, k_yn, k_loop = jax.random.split(key, 4)

        def vt(img):
            return svd.Vt(op_params, img)

        def a_noise(img):  # U^T A n in the spectral layout: s * (V^T n)[:m]
            return s * vt(img)[:m]

        def y_bridge(y_k, k, n_img):
            if official:  # the code's float32 coefficients of float64 tables, its op order
                b1, b2, b3, b4 = (jnp.asarray(tab[f"bridge{i}"], dtype)[k] for i in (1, 2, 3, 4))
                return b2 * ybar_meas + b1 * (y_k - b3 * ybar_meas) + b4 * a_noise(n_img)
            c = schedule.gather(k, dtype)
            a, ap = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            c1 = jnp.sqrt((1 - c_rate) * (1 - ap) / (1 - a))
            return (
                jnp.sqrt(ap) * ybar_meas
                + c1 * (y_k - jnp.sqrt(a) * ybar_meas)
                + jnp.sqrt(c_rate) * jnp.sqrt(1 - ap) * a_noise(n_img)
            )

        y_top = a_noise(get("y_T", replay, k_yT, shape))
        z_top = get("x_T", replay, k_x, (n, *shape))
        v_top = jax.vmap(vt)(z_top)
        ratio = svd.pad(y_top) / s_safe
        v_T = jnp.where(observed, ratio, v_top)
        x_T = jax.vmap(lambda v: svd.V(op_params, v))(v_T).astype(dtype)
        y_next = y_bridge(y_top, K - 1, get("y_noise_T", replay, k_yn, shape))

        forced = (replay or {}).get("x_in")  # teacher forcing (parity): each step's input
        if forced is not None:
            x_in = jnp.asarray(forced, dtype)
            y_in = jax.vmap(lambda im: svd.Ut(op_params, im))(jnp.asarray(replay["y_in"], dtype))
        w_in = (replay or {}).get("weights_in")  # parity: the weights of the code's proposals

        def step(x, logw, k, z, y_k):
            if forced is not None:
                x, y_k = x_in[K - 2 - k], y_in[K - 2 - k]
            c = schedule.gather(k, dtype)
            a, ap = c["alphas_cumprod"], c["alphas_cumprod_prev"]
            t = jnp.full((n,), c["timestep"], jnp.int32)
            out = model_fn(params, x, t)
            eps, _ = gaussian.split_model_output(out, x.shape[-1], schedule.variance_type)
            eps = eps.astype(dtype)
            x0 = gaussian.x0_from_eps(c, x, eps)
            if clip_denoised:
                x0 = clip_inclusive(x0)
            if official:
                e3, e4 = (jnp.asarray(tab[name], dtype)[k] for name in ("e3", "e4"))
                m_back = e3 * x0 + e4 * eps
            else:
                m_back = jnp.sqrt(ap) * x0 + jnp.sqrt(1 - ap) * jnp.sqrt(1 - c_rate) * eps
            pv = (1 - ap) * c_rate
            vd = a * sigma**2
            cc = (pv + 1e-6) / vd
            yk_full = svd.pad(y_k)
            vb = jax.vmap(vt)(m_back)
            vm = (vb + cc * s_full * yk_full) / (1 + cc * s_full**2)
            std = jnp.sqrt(pv * vd / (vd + pv * s_full**2))
            vz = jax.vmap(vt)(z["z"])
            v_new = vm + std * vz
            if official:  # x - c/(c+1) A x with x = m_back + c A^T y: float32 cancellation
                co, c1, c2 = (jnp.asarray(tab[name], dtype)[k] for name in ("coef", "c1", "c2"))
                xm = vb + co * s_full * yk_full
                vm = xm - (co / (co + 1.0)) * (s_full**2 * xm)
                v_new = vm + (c1 * vz - (c1 - c2) * (s_full**2 * vz))

            def weights(v_new, vb, d):  # d = v_new - vm, the proposal's noise
                resid = yk_full - s_full * v_new
                log_y = -jnp.sum(jnp.where(observed, resid**2, 0), -1) / (2 * sigma**2 * ap)
                log_x = -jnp.sum((v_new - vb) ** 2, -1) / (2 * pv)
                log_q = -0.5 * jnp.sum(d * d * (1 / pv + s_full**2 / vd), -1)
                lw = log_y + log_x - log_q
                # official: the code's norms run over M identical copies of each proposal
                return lw * n if official else lw

            lw = weights(v_new, vb, v_new - vm)
            guided = k > 0
            x_prop = jax.vmap(lambda v: svd.V(op_params, v))(v_new).astype(dtype)
            x_res, _, anc, e = pt.resample(x_prop, lw, z, resampling)
            x_next = jnp.where(guided, x_res, m_back)
            e = jnp.where(guided, e, jnp.asarray(n, jnp.float32))
            y_prev = y_bridge(y_k, k, z["y_noise"])
            record = {"log_weights_step": lw, "ancestors": anc, "x0_hat": x0, "eps": eps,
                      "mean_back": m_back, "proposal": x_prop}  # fmt: skip
            if w_in is not None:  # x' - m of the code's own proposal is this step's noise
                i = K - 2 - k
                xp_in, mb_in = (jnp.asarray(w_in[a], dtype)[i] for a in ("proposal", "mean_back"))
                noise = v_new - vm if not official else c1 * vz - (c1 - c2) * (s_full**2 * vz)
                record["log_weights_forced"] = weights(
                    jax.vmap(vt)(xp_in), jax.vmap(vt)(mb_in), noise
                )
            return x_next, jnp.zeros_like(logw), y_prev, e, record

        return pt.particle_chain(
            step,
            x_T,
            steps,
            key=k_loop,
            replay=replay,
            loop=loop,
            label="fps_smc",
            estimator=estimator,
            state=y_next,
            draw=draw,
        )

    return sample
