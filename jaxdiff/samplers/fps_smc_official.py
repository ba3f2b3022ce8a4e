"""The official FPS-SMC code's super-resolution and deblurring branches, for parity only
(ZehaoDou-official/FPS-SMC-2023 guided_diffusion/gaussian_diffusion.py `p_sample_loop`,
`p_mean_variance`, `DDIM.p_sample`; guided_diffusion/svd_replacement.py `get_mean`, `get_noise`,
`transpose`).

These branches do not filter one linear model: the proposal uses the SVD form `task_Svd` (the
DDRM block-mean super-resolution, or the separable deblurring with its tiled singulars) while
the y sequence and the weights use other operators:

- `measure` (the y sequence y_{T-1} = B n, y_{k-1} = b2 y + b1 (y_k - b3 y) + b4 B n_k, and the
  weights' likelihood ||y_k - B x'||^2): the DPS bicubic Resizer for super-resolution, the SVD
  form's own H for deblurring (its measurement is task_Svd.forward);
- `prev` (the proposal's density, ||P (x' - m)||^2 / (2 a)): the Resizer again, or the DPS
  reflect-padded blur for deblurring;
- the Resizer's output is read by the SVD form as its block-mean measurement (A^T y).

With ex = sigma^2 abar / (c (1 - abar_prev) + 1e-6), pv = c (1 - abar_prev), vd = sigma^2 abar
and get_mean(v, t) = V diag(t / (t + s^2)) V^T v:

    start  x = get_mean(A^T y_{T-1}, vd) + V diag(sqrt(vd / (vd + s^2))) n   (one n shared by
           every particle; the mean is (I + A^T A / vd)^-1 A^T y, not A^+ y, as the code has it)
    step   m_back = sqrt(abar_prev) x0_hat + sqrt((1 - c)(1 - abar_prev)) eps
           m = get_mean(m_back + A^T y_k / ex, ex)
           x' = m + V diag(sqrt(ex / (ex + s^2))) (sqrt(pv) z)   (z in the pixel layout, not V^T z)
           log w = -||y_k - B x'||^2 / (2 sigma^2 abar_prev) - ||x' - m_back||^2 / (2 pv)
                   + ||x' - m||^2 / (2 pv) + ||P (x' - m)||^2 / (2 vd)
           step 0: m_back.

Flat vectors are the code's channel-major x.reshape(B, -1) (`official_svd.to_flat`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import gaussian
from jaxdiff.operators.official_svd import to_flat
from jaxdiff.samplers import particles as pt
from jaxdiff.samplers.common import check_measurement, clip_inclusive, resolve_hparams


def _sq_norm(a):
    """torch.linalg.norm(a).item() ** 2: the float32 norm, squared."""
    return jnp.sqrt(jnp.sum(jnp.square(a))) ** 2


def branch_tables(schedule, defaults, svd) -> dict:
    """Per-step tables of these branches (numpy; c_rate and sigma concrete): get_mean's float32
    t / (t + s^2) and get_noise's float64 sqrt(t / (t + s^2)) rounded, at t = vd ("vd") and
    t = ex ("ex"); the weights' variances pv, vd and sigma^2 abar_prev."""
    s_full = np.asarray(svd.pad(svd.singulars(None)), np.float64)
    a = np.asarray(schedule.tables["alphas_cumprod"], np.float64)
    ap = np.asarray(schedule.tables["alphas_cumprod_prev"], np.float64)
    c, sg = float(defaults["c_rate"]), float(defaults["sigma"])
    pv = (1 - ap) * c
    vd = a * sg * sg
    ex = vd / (pv + 1e-6)
    f = np.float32
    out = {"pv": pv, "vd": vd, "var_y": sg * sg * ap}
    for name, t in (("vd", vd), ("ex", ex)):
        t32 = t.astype(f)[:, None]
        out[f"mean_{name}"] = t32 / (t32 + f(s_full) ** 2)
        out[f"noise_{name}"] = np.sqrt(t[:, None] / (t[:, None] + s_full**2)).astype(f)
    return out


def guided_mean(svd, op_params, param, m_back, aty, coef, stable: bool = False):
    """get_mean(m_back + coef A^T y, ex) as the code computes it: m_back + coef A^T y is formed
    in pixels (coef ~ 1e7 at the top steps: float32 rounds it at that scale) before V^T. The
    stable form adds coef V^T A^T y = coef [s U^T y, 0] in the spectral basis instead (the
    replay's measure of the code form's float32 cancellation)."""
    if stable:
        spec = svd.Vt(op_params, m_back) + coef * svd.Vt(op_params, aty)
        return svd.V(op_params, param * spec)
    return svd.V(op_params, param * svd.Vt(op_params, m_back + coef * aty))


def make_official_svd_branch(
    model_fn, schedule, *, operator, measure, prev, tables, defaults, loop, shape, n,
    resampling, estimator, clip_denoised, dtype,
):  # fmt: skip
    """`sample(params, key, y, op_params, hparams=None, replay=None)` as `make_fps_smc`'s, y the
    `measure` operator's output. replay: {"y_T": (H,W,C), "x_T": (H,W,C) the start's one draw,
    "y_noise_T": (H,W,C), "noise": {"z", "y_noise", "u", "ancestors"}}; "x_in" / "y_in"
    (teacher forcing) as there, y_in in `measure`'s layout; "weights_in": {"proposal",
    "mean_back"} (K,N,H,W,C) gives each step's weights of those (recorded as
    "log_weights_forced")."""
    svd = operator.svd
    K = schedule.num_steps
    bt = branch_tables(schedule, defaults, svd)
    # the weights' variances (float64 in the code; float32 here, relative 1e-7)
    var_y, pv_j, vd_j = (jnp.asarray(bt[k], jnp.float32) for k in ("var_y", "pv", "vd"))
    steps = np.arange(K - 1)[::-1]
    m_params, p_params = measure.sample(None), prev.sample(None)

    def B(x):
        return measure.apply(m_params, x)

    def P(x):
        return prev.apply(p_params, x)

    def draw(key, x):
        k_z, k_y, k_u = jax.random.split(key, 3)
        return {
            "z": jax.random.normal(k_z, x.shape, x.dtype),
            "y_noise": jax.random.normal(k_y, x.shape[1:], x.dtype),
            **pt.resample_draws(k_u, n),
        }

    def get(name, replay, key):
        v = (replay or {}).get(name)
        if v is None:
            return jax.random.normal(key, shape, dtype)
        if tuple(jnp.shape(v)) != tuple(shape):
            raise ValueError(f"fps_smc: replay {name} has shape {tuple(jnp.shape(v))}, "
                             f"expected {shape}")  # fmt: skip
        return jnp.asarray(v, dtype)

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        resolve_hparams(defaults, hparams, "fps_smc")  # the tables hold c_rate and sigma
        check_measurement(lambda _, x: B(x), None, jnp.zeros(shape, dtype), y, "fps_smc")
        y = jnp.asarray(y, dtype)

        def Vt(x):
            return svd.Vt(op_params, x)

        def V(v):
            return svd.V(op_params, v)

        def Ht(y_meas):  # the SVD form reads any measurement as its own flat y
            flat = to_flat(y_meas) if y_meas.ndim == 3 else y_meas.reshape(-1)
            return svd.Ht(op_params, flat)

        def get_mean(x, k, name):
            return V(jnp.asarray(bt[f"mean_{name}"], dtype)[k] * Vt(x))

        def get_noise(x, k, name):
            return V(jnp.asarray(bt[f"noise_{name}"], dtype)[k] * to_flat(x))

        def y_bridge(y_k, k, n_img):
            b1, b2, b3, b4 = (jnp.asarray(tables[f"bridge{i}"], dtype)[k] for i in (1, 2, 3, 4))
            return b2 * y + b1 * (y_k - b3 * y) + b4 * B(n_img)

        k_yT, k_x, k_yn, k_loop = jax.random.split(key, 4)
        y_top = B(get("y_T", replay, k_yT))
        x_one = get_mean(Ht(y_top), K - 1, "vd") + get_noise(get("x_T", replay, k_x), K - 1, "vd")
        x_T = jnp.broadcast_to(x_one, (n, *shape)).astype(dtype)
        y_next = y_bridge(y_top, K - 1, get("y_noise_T", replay, k_yn))

        forced = (replay or {}).get("x_in")
        if forced is not None:
            x_in = jnp.asarray(forced, dtype)
            y_in = jnp.asarray(replay["y_in"], dtype)
        w_in = (replay or {}).get("weights_in")  # parity: the weights of the code's proposals

        def step(x, logw, k, z, y_k):
            if forced is not None:
                x, y_k = x_in[K - 2 - k], y_in[K - 2 - k]
            cf = schedule.gather(k, dtype)
            t = jnp.full((n,), cf["timestep"], jnp.int32)
            eps, _ = gaussian.split_model_output(
                model_fn(params, x, t), x.shape[-1], schedule.variance_type
            )
            eps = eps.astype(dtype)
            x0 = gaussian.x0_from_eps(cf, x, eps)
            if clip_denoised:
                x0 = clip_inclusive(x0)
            e3, e4, co, c1 = (jnp.asarray(tables[c], dtype)[k] for c in ("e3", "e4", "coef", "c1"))
            m_back = e3 * x0 + e4 * eps
            param, aty = jnp.asarray(bt["mean_ex"], dtype)[k], Ht(y_k)
            m = jax.vmap(lambda mb: guided_mean(svd, op_params, param, mb, aty, co))(m_back)
            noise = jax.vmap(lambda zz: get_noise(c1 * zz, k, "ex"))(z["z"])
            x_prop = m + noise
            d = x_prop - m

            def logw_one(xp, mb, dd):
                log_y = -_sq_norm(y_k - B(xp)) / (2 * var_y[k])
                log_x = -_sq_norm(xp - mb) / (2 * pv_j[k])
                log_prev = -_sq_norm(dd) / (2 * pv_j[k]) - _sq_norm(P(dd)) / (2 * vd_j[k])
                return log_y + log_x - log_prev

            lw = jax.vmap(logw_one)(x_prop, m_back, d)
            guided = k > 0
            x_res, _, anc, e = pt.resample(x_prop, lw, z, resampling)
            x_next = jnp.where(guided, x_res, m_back)
            e = jnp.where(guided, e, jnp.asarray(n, jnp.float32))
            record = {"log_weights_step": lw, "ancestors": anc, "x0_hat": x0, "eps": eps,
                      "mean_back": m_back, "mean": m, "proposal": x_prop}  # fmt: skip
            if w_in is not None:  # x' - m of the code's own proposal is this step's noise
                i = K - 2 - k
                xp_in, mb_in = (jnp.asarray(w_in[a], dtype)[i] for a in ("proposal", "mean_back"))
                record["log_weights_forced"] = jax.vmap(logw_one)(xp_in, mb_in, noise)
            return x_next, jnp.zeros_like(logw), y_bridge(y_k, k, z["y_noise"]), e, record

        return pt.particle_chain(
            step, x_T, steps, key=k_loop, replay=replay, loop=loop, label="fps_smc",
            estimator=estimator, state=y_next, draw=draw,
        )  # fmt: skip

    return sample
