"""Replay of the FPS-SMC fixtures (`fps_smc_<task>.npz` + the same-name .json sidecar).

The fixtures ran ZehaoDou-official/FPS-SMC-2023's `p_sample_loop` (inpainting branch) on adm_tiny
(tests/fixtures/fps_smc/README.txt). The replay builds the project's `inpaint` operator from the
stored mask (its SVD is the identity with the mask as singular values: the code's
operator.forward), the respaced schedule from the stored step count, and runs the `fps_smc`
sampler with `official=True`, feeding every normal draw and the recorded ancestors.

The code's guided mean cancels catastrophically in float32 at the top steps (x - c/(c+1) x with
c ~ 1e7 on the observed pixels): its own float64 replay departs by up to 0.15 there, and that
difference reaches every later network input. So the gating checks are TEACHER-FORCED: every
step runs from the reference's own input particles and y_t (`x_in`, `y_in`), and compares the
network's eps, x0_hat, and the proposal and resampled particles on the unobserved pixels (no
cancellation there) per step under |diff| <= 1e-5 max|ref_k| (eps atol 1e-4, x0_hat 3e-4),
capped at 1e-3 max(1, max|ref|). On the observed pixels the floor is 3x the code's float32
rounding of x (c max|y_k| 2^-23); the steps where that exceeds the cap (the top four of ten
here), and the normalised log-weights of those steps, are reported, not gating; elsewhere the
log-weights are within 1e-3 of their largest magnitude. The resampling scheme is checked on
the code's own numbers: the shared inverse-CDF (`particles.ancestors`) on the recorded
log-weights and the uniforms behind random.choices must give the recorded ancestors exactly.
The whole chain (forced ancestors) is reported, not gating.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.operators import get_operator
from jaxdiff.operators.official_svd import (
    OfficialDeblurring,
    OfficialOperator,
    OfficialSuperResolution,
    to_flat,
)
from jaxdiff.parity.common import Fixture, compare, f64_level, nchw_to_nhwc, swap01
from jaxdiff.samplers import batched, get_sampler
from jaxdiff.samplers import particles as pt
from jaxdiff.samplers.fps_smc import official_tables
from jaxdiff.samplers.fps_smc_official import branch_tables, guided_mean

TRAJECTORY = ("x_t",)
SVD_BRANCHES = ("super_resolution", "gaussian_blur")
RTOL, ATOL_EPS, ATOL_X0, CAP = 1e-5, 1e-4, 3e-4, 1e-3


def normalize(logw):
    logw = np.asarray(logw, np.float64)
    mx = logw.max(-1, keepdims=True)
    return logw - (mx + np.log(np.exp(logw - mx).sum(-1, keepdims=True)))


def gate(fx, key, got, want, atol=0.0, floor=None, cap=None, level=None, inherited=None):
    """One per-step check: |diff| <= atol + RTOL max|ref_k|, floored per step at 3x the
    reference's float64 level (`level`) and at 3x `floor` (steps where that floor exceeds
    `cap` are reported, not gating), capped at `cap`; then floored at 3x `inherited` (an
    input's measured, gated error carried into this array)."""
    r = compare(got, want, atol, RTOL, per_step=True)
    err = np.asarray(r["per_step_max_abs_err"])
    tol = np.full(err.shape, r["tol"])
    if level is not None:  # 3x the reference's own float32-vs-float64 level, per step
        lv = np.nan_to_num(np.asarray(level, np.float64).reshape(-1)[: len(err)])
        tol[: len(lv)] = np.maximum(tol[: len(lv)], 3 * lv)
    if floor is not None:
        tol = np.maximum(tol, 3 * floor[: len(err)])
        bound = 3 * floor[: len(err)] > cap
        r["float32_cancellation_steps"] = np.nonzero(bound)[0].tolist()
    else:
        bound = np.zeros(err.shape, bool)
    tol = np.minimum(tol, cap)
    if inherited is not None:
        tol = np.maximum(tol, 3 * np.asarray(inherited)[: len(err)])
    r.update(cap=cap, tol=float(tol.max()), per_step_tol=tol.tolist())
    r["pass"] = bool(np.all((err <= tol) | bound))
    r["max_abs_err_gated"] = float(np.where(bound, 0, err).max())
    fx.add(key, r)


def gate_x0_hat(fx, tf, ref, sched, cap):
    """x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar) inherits the network's float32 eps error
    times sqrt(1 / abar - 1) (55 at the top model step of 10 steps, up to 158 near t = 999): the
    check is floored per step at 3x the reference's own level (the first step's input is the
    same in both of its runs) and at 3x that measured inheritance, past the cap."""
    d = np.abs(np.asarray(tf["eps"], np.float64) - ref["eps"])
    eps_err = swap01(d).reshape(d.shape[1], -1).max(1)
    ks = np.arange(len(eps_err))[::-1]
    abar = np.asarray(sched.tables["alphas_cumprod"], np.float64)[ks]
    level = fx.config.get("f64_replay", {}).get("max_abs_diff_x0_hat_per_step")
    gate(fx, "x0_hat_teacher_forced", swap01(tf["x0_hat"]), swap01(ref["x0_hat"]), ATOL_X0,
         cap=cap, level=level, inherited=eps_err * np.sqrt(1 / abar - 1))  # fmt: skip


def _nhwc(a):
    return np.moveaxis(np.asarray(a), -3, -1)


def replay(npz_path, model_dir=None) -> dict:
    """Float32 only (no `--float64`): the checks are the float32 code's own steps, its float32
    cancellation included (`official=True` is a float32 form)."""
    fx = Fixture.load(npz_path, None, "float32", trajectory=TRAJECTORY)
    task = fx.config.get("task")
    if task == "inpainting":
        return _replay_inpainting(fx, model_dir)
    if task in SVD_BRANCHES:
        return replay_svd_branch(fx, model_dir)
    known = ", ".join(("inpainting", *SVD_BRANCHES))
    raise ValueError(
        f"fps_smc fixture: unknown task {task!r} (the official code's branches: {known})"
    )


def _replay_inpainting(fx, model_dir):
    cfg = fx.config
    x0 = np.asarray(fx["x0"])
    b = x0.shape[0]
    shape = tuple(nchw_to_nhwc(x0).shape[1:])
    n = int(fx["particles"])
    steps = int(cfg["steps"])
    c_rate, sigma = float(cfg["c_rate"]), float(cfg["sigma"])
    masks = np.asarray(fx["mask"])
    k_run = steps - 1
    z = _nhwc(fx["z"])  # (B, guided, N, H, W, C)
    guided = z.shape[1]
    ref = {k: _nhwc(fx.arrays[k]) for k in ("x_t", "x0_hat", "eps", "proposal")}
    ys = _nhwc(fx["ys"])  # (B, steps, H, W, C), index = respaced step
    with fx.context():
        sched = make_schedule(1000, respacing=str(steps), variance_type="learned_range")
        fx.exact("t", np.arange(k_run)[::-1])
        fn, params, _ = fx.model("adm_tiny", model_dir)
        ops = [get_operator("inpaint", image_shape=shape, mask=m) for m in masks]
        op_params = jax.tree.map(lambda *a: jnp.stack(a), *[o.sample(None) for o in ops])
        sample = get_sampler("fps_smc")(
            fn, sched, operator=ops[0], image_shape=shape, dtype=fx.jdtype, keep_trajectory=True,
            num_particles=n, resampling="multinomial", estimator="draw", official=True,
            c_rate=c_rate, sigma=sigma,
        )  # fmt: skip
        rep = _recorded_draws(fx, _nhwc(fx["x_T_noise"]), k_run, n)
        keys = jax.random.split(jax.random.key(0), b)
        y = fx.jnp(_nhwc(fx["y"]))
        run = jax.jit(batched(sample))
        chain = jax.tree.map(lambda a: np.asarray(a, np.float64), run(params, keys, y, op_params,
                             None, rep).trajectory)  # fmt: skip
        # teacher forcing: step i from the reference's input (x_T: rebuilt from the same
        # draws, exactly: observed = y_{T-1}, holes = the start's noise; then x_t[i - 1])
        x_T = np.where(masks[:, None, :, :, None] > 0, ys[:, -1][:, None], rep["x_T"])
        x_in = np.concatenate([x_T[:, None], ref["x_t"][:, :-1]], 1)
        y_in = ys[:, ::-1][:, 1 : k_run + 1]  # y_k for k = K-2 .. 0
        w_in = _code_weight_inputs(fx, sched, c_rate, sigma, ref, k_run)
        forced = {**rep, "x_in": fx.jnp(x_in), "y_in": fx.jnp(y_in), "weights_in": w_in}
        tf = run(params, keys, y, op_params, None, forced).trajectory
        tf = jax.tree.map(lambda a: np.asarray(a, np.float64), tf)
        picks = _code_picks(fx)
    obs = np.broadcast_to(masks[..., None] > 0, (b, *shape))  # (B, H, W, C)

    def part(a, where):  # (B, K, N, H, W, C) -> (K, B*N*count) on `where` pixels
        w = np.broadcast_to(where[:, None, None], a.shape)
        return swap01(np.where(w, a, 0.0))

    def cap_of(name):
        return CAP * max(1.0, float(np.abs(fx.arrays[name]).max()))

    # the code's float32 cancellation on observed pixels: x = m_back + c y is rounded to its
    # ulp, c max|y_k| 2^-23, before x - c/(c+1) x; 3x that is the floor of those checks, and
    # the steps where it exceeds the cap are reported, not gating
    tab = official_tables(sched, {"c_rate": c_rate, "sigma": sigma})
    ks = np.arange(k_run)[::-1]
    ulp = np.array([tab["coef"][k] * np.abs(ys[:, k]).max() * 2.0**-23 for k in ks])
    mb_err = _mean_back_error(tf, w_in)  # the holes' proposal is m_back + noise

    holes = ~obs
    eps_tf, eps_ref = swap01(tf["eps"]), swap01(ref["eps"])
    gate(fx, "eps_teacher_forced", eps_tf, eps_ref, ATOL_EPS, cap=cap_of("eps"))
    gate_x0_hat(fx, tf, ref, sched, cap_of("x0_hat"))
    for ours, theirs, k in (("proposal", "proposal", guided), ("x", "x_t", k_run)):
        got, want = tf[ours][:, :k], ref[theirs]
        gate(fx, f"{theirs}_teacher_forced_holes", part(got, holes), part(want, holes),
             floor=mb_err[:k], cap=cap_of(theirs))  # fmt: skip
        gate(fx, f"{theirs}_teacher_forced_observed", part(got, obs), part(want, obs),
             floor=(ulp + mb_err)[:k], cap=cap_of(theirs))  # fmt: skip
    # the weights read the observed pixels: the same steps are reported, not gating
    # (sums over the image of squared residuals over variances ~1e-3: float32 norms; the rule
    # is the cap, 1e-3 of the largest normalised log-weight)
    whole = _weights_picks_and_chain(fx, tf, chain, ref, picks)
    fx.skip("x_start", "drawn by the script, unused by the inpainting branch")
    return fx.report(
        "fps_smc", task="inpainting", batch=b, particles=n, steps=steps, c_rate=c_rate,
        reported_not_gating=whole,
    )  # fmt: skip


def _recorded_draws(fx, x_T, k_run, n):
    """The replay dict of the code's draws (sampling order), its picks forced."""
    z, anc = _nhwc(fx["z"]), np.asarray(fx.arrays["ancestors"])
    bridge = _nhwc(fx["bridge_noise"])
    b, guided = z.shape[:2]
    pad = np.zeros((b, k_run - guided, *z.shape[2:]), z.dtype)
    return {
        "y_T": fx.jnp(_nhwc(fx["y_T"])[:, 0]),
        "x_T": fx.jnp(x_T),
        "y_noise_T": fx.jnp(bridge[:, 0]),
        "noise": {
            "z": fx.jnp(np.concatenate([z, pad], 1)),
            "y_noise": fx.jnp(np.concatenate([bridge[:, 1:], bridge[:, :1] * 0], 1)),
            "u": jnp.zeros((b, k_run, n), jnp.float32),
            "ancestors": jnp.asarray(
                np.concatenate([anc, np.zeros((b, k_run - guided, n), anc.dtype)], 1), jnp.int32
            ),
        },
    }


def _code_picks(fx):
    """The shared inverse CDF (`particles.ancestors`) on the code's log-weights and the uniforms
    behind its random.choices."""
    return jax.vmap(jax.vmap(lambda lw, u: pt.ancestors(lw, {"u": u}, "multinomial")))(
        jnp.asarray(fx.arrays["log_weights_step"], jnp.float32),
        jnp.asarray(fx["uniforms"], jnp.float32),
    )


def _code_weight_inputs(fx, sched, c_rate, sigma, ref, k_run):
    """The code's proposals and its m_back = e3 x0_hat + e4 eps (float32, its coefficients, from
    its recorded x0_hat and eps), padded to every step: the sampler's weights of those
    (`weights_in`) check the weight formula apart from the float32 error upstream of it."""
    tab = official_tables(sched, {"c_rate": c_rate, "sigma": sigma})
    ks = np.arange(k_run)[::-1]
    e3, e4 = (tab[c][ks].reshape(1, -1, 1, 1, 1, 1) for c in ("e3", "e4"))
    x0, eps = (ref[c].astype(np.float32) for c in ("x0_hat", "eps"))
    mb = (e3 * x0 + e4 * eps).astype(np.float32)
    prop = ref["proposal"].astype(np.float32)
    pad = np.zeros((prop.shape[0], k_run - prop.shape[1], *prop.shape[2:]), np.float32)
    return {"proposal": fx.jnp(np.concatenate([prop, pad], 1)), "mean_back": fx.jnp(mb)}


def _mean_back_error(tf, w_in):
    """Per step, max |m_back - the code's m_back| of the teacher-forced steps: the proposals
    inherit it (x0_hat's float32 error, times sqrt(abar_prev))."""
    d = np.abs(np.asarray(tf["mean_back"], np.float64) - np.asarray(w_in["mean_back"]))
    return swap01(d).reshape(d.shape[1], -1).max(1)


def _weights_picks_and_chain(fx, tf, chain, ref, picks):
    """The checks every branch closes with: the normalised log-weights of the code's own
    proposals (`weights_in`) within 1e-3 of their largest magnitude at every step, the picks
    exactly, and, reported, not gating: the weights of the teacher-forced proposals (they move
    with the proposals' float32 error times ~1/(sigma^2 abar) per pixel) and the whole chain
    (forced picks). Returns what is reported."""
    lw_ref = swap01(normalize(fx.arrays["log_weights_step"]))
    guided = lw_ref.shape[0]
    lw_cap = CAP * max(1.0, float(np.abs(lw_ref).max()))
    lw_forced = swap01(normalize(tf["log_weights_forced"]))[:guided]
    # floored per step at 3x the reference's own float64 level: the weights are sums of ~1e6
    # over the image in float32 (in the code's norms and here), and the normalised ones keep
    # that absolute error however small their spread
    f64 = fx.config.get("f64_replay", {})
    gate(fx, "log_weights_step_weights_forced", lw_forced, lw_ref, lw_cap, cap=np.inf,
         level=f64.get("max_abs_diff_log_weights_step_per_step"))  # fmt: skip
    lw_tf = swap01(normalize(tf["log_weights_step"]))[:guided]
    fx.exact("ancestors", np.asarray(picks))
    fx.compared.update({"x_t", "x0_hat", "eps", "proposal", "log_weights_step", "uniforms"})
    fx.skip("sample", "particle 0 of the last x_t (compared there)")
    fx.skip("ys", "the y sequence: the teacher-forced steps' input y_t")
    fx.skip("y_noise", "the measurement's noise (y is an input)")
    whole = {
        name: compare(
            swap01(chain[ours])[: ref[name].shape[1]],
            swap01(ref[name]),
            0.0,
            RTOL,
            per_step=True,
            f64=f64_level(f64, name),
        )  # fmt: skip
        for ours, name in (("x", "x_t"), ("eps", "eps"), ("x0_hat", "x0_hat"))
    }
    return {
        "log_weights_step_teacher_forced": compare(lw_tf, lw_ref, lw_cap, 0.0, per_step=True),
        "chain": whole,
    }


def _svd_branch_operators(fx, shape):
    """The code's task_Svd (from the stored torch.svd pieces), its y sequence's and likelihood's
    operator, and its proposal density's (the DPS operator)."""
    cfg = fx.config
    u, v, sv = (np.asarray(fx[f"svd_{k}"]) for k in ("u_small", "v_small", "singulars_small"))
    if cfg["task"] == "super_resolution":
        r = int(cfg["scale_factor"])
        op = OfficialOperator(OfficialSuperResolution(shape, r, u, v, sv))
        resizer = get_operator("super_resolution", image_shape=shape, factor=r, method="bicubic")
        return op, resizer, resizer
    perm = np.asarray(fx["svd_perm"])
    op = OfficialOperator(OfficialDeblurring(shape, u, v, sv, perm, tiled=True))
    blur = get_operator("blur", image_shape=shape, kernel=np.asarray(fx["kernel"]), method="direct")
    return op, op, blur


def _cancellation_level(svd, sched, c_rate, sigma, tf, y_in, guided):
    """Per step, the float32 cancellation of the code's guided mean on the teacher-forced inputs:
    max |get_mean(m_back + c A^T y_k) - the same mean formed in the spectral basis| (both float32,
    `fps_smc_official.guided_mean`); 0 at the unguided last step (x = m_back)."""
    defaults = {"c_rate": c_rate, "sigma": sigma}
    bt = branch_tables(sched, defaults, svd)
    coef = official_tables(sched, defaults)["coef"]
    ks = np.arange(y_in.shape[1])[::-1]
    mb = np.asarray(tf["mean_back"], np.float32)  # (B, K, N, H, W, C)

    def one(m_back, y_k, k):
        aty = svd.Ht(None, y_k.reshape(-1) if y_k.ndim == 1 else to_flat(y_k))
        param, co = jnp.asarray(bt["mean_ex"])[k], jnp.asarray(coef)[k]

        def gap(m):
            code = guided_mean(svd, None, param, m, aty, co)
            return jnp.max(jnp.abs(code - guided_mean(svd, None, param, m, aty, co, stable=True)))

        return jnp.max(jax.vmap(gap)(m_back))

    per = jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, 0, 0)), in_axes=(0, 0, None)))(
        jnp.asarray(mb), jnp.asarray(y_in, jnp.float32), jnp.asarray(ks)
    )
    level = np.asarray(per, np.float64).max(0)
    level[guided:] = 0.0
    return level


def replay_svd_branch(fx, model_dir):
    """The super-resolution / deblurring branches (`fps_smc_official`): teacher-forced per step
    from the recorded inputs. The proposals and particles are floored per step at 3x the code
    form's float32 cancellation (`_cancellation_level`: m_back + A^T y_k / ex, 1/ex ~ 1e7 at the
    top steps, formed in pixels before V^T); steps where that floor passes the cap, and their
    log-weights, are reported, not gating."""
    cfg = fx.config
    x0 = np.asarray(fx["x0"])
    b = x0.shape[0]
    shape = tuple(nchw_to_nhwc(x0).shape[1:])
    n, steps = int(fx["particles"]), int(cfg["steps"])
    c_rate, sigma = float(cfg["c_rate"]), float(cfg["sigma"])
    k_run = steps - 1
    op, measure, prev = _svd_branch_operators(fx, shape)
    image_y = measure is not op  # the Resizer's (h, w, C); the SVD form's flat channel-major

    def meas(a):  # (..., C, h, w) NCHW -> the measure operator's layout
        a = np.asarray(a)
        return _nhwc(a) if image_y else a.reshape(*a.shape[:-3], -1)

    z = _nhwc(fx["z"])  # (B, guided, N, H, W, C)
    guided = z.shape[1]
    ref = {k: _nhwc(fx.arrays[k]) for k in ("x_t", "x0_hat", "eps", "proposal")}
    ys = meas(fx["ys"])  # (B, steps, ...), index = respaced step
    with fx.context():
        sched = make_schedule(1000, respacing=str(steps), variance_type="learned_range")
        fx.exact("t", np.arange(k_run)[::-1])
        fn, params, _ = fx.model("adm_tiny", model_dir)
        sample = get_sampler("fps_smc")(
            fn, sched, operator=op, image_shape=shape, dtype=fx.jdtype, keep_trajectory=True,
            num_particles=n, resampling="multinomial", estimator="draw", official=True,
            official_operators={"measure": measure, "prev": prev}, c_rate=c_rate, sigma=sigma,
        )  # fmt: skip
        rep = _recorded_draws(fx, _nhwc(fx["x_T_noise"])[:, 0], k_run, n)
        keys = jax.random.split(jax.random.key(0), b)
        y = fx.jnp(meas(fx["y"]))
        run = jax.jit(batched(sample))
        own = run(params, keys, y, None, None, rep).trajectory
        chain = jax.tree.map(lambda a: np.asarray(a, np.float64), own)
        x_in = np.concatenate([_nhwc(fx["x_T"])[:, None], ref["x_t"][:, :-1]], 1)
        y_in = ys[:, ::-1][:, 1 : k_run + 1]  # y_k for k = K-2 .. 0
        w_in = _code_weight_inputs(fx, sched, c_rate, sigma, ref, k_run)
        forced = {**rep, "x_in": fx.jnp(x_in), "y_in": fx.jnp(y_in), "weights_in": w_in}
        tf = run(params, keys, y, None, None, forced).trajectory
        tf = jax.tree.map(lambda a: np.asarray(a, np.float64), tf)
        picks = _code_picks(fx)
        level = _cancellation_level(op.svd, sched, c_rate, sigma, tf, y_in, guided)
    mb_err = _mean_back_error(tf, w_in)

    def cap_of(name):
        return CAP * max(1.0, float(np.abs(fx.arrays[name]).max()))

    eps_tf, eps_ref = swap01(tf["eps"]), swap01(ref["eps"])
    gate(fx, "eps_teacher_forced", eps_tf, eps_ref, ATOL_EPS, cap=cap_of("eps"))
    gate_x0_hat(fx, tf, ref, sched, cap_of("x0_hat"))
    # the start (the code's one shared draw): its first step's eps from our own start
    gate(fx, "eps_first_step_own_start", swap01(chain["eps"][:, :1]), swap01(ref["eps"][:, :1]),
         ATOL_EPS, cap=cap_of("eps"))  # fmt: skip
    for ours, theirs, k in (("proposal", "proposal", guided), ("x", "x_t", k_run)):
        gate(fx, f"{theirs}_teacher_forced", swap01(tf[ours][:, :k]), swap01(ref[theirs]),
             floor=(level + mb_err)[:k], cap=cap_of(theirs))  # fmt: skip
    whole = _weights_picks_and_chain(fx, tf, chain, ref, picks)
    fx.compared.add("x_T")
    fx.skip("x_start", "drawn by the script, unused by this branch")
    return fx.report(
        "fps_smc", task=cfg["task"], batch=b, particles=n, steps=steps, c_rate=c_rate,
        reported_not_gating=whole,
    )  # fmt: skip
