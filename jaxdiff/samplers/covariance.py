"""Tweedie covariance products and the measurement-space solves of the moment-matching samplers
(MMPS, TMPD), written once.

Tweedie's formulas for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps give the first two moments of
p(x0 | x_t) from the denoiser x0_hat(x_t) = E[x0 | x_t]:

    Cov[x0 | x_t] = gamma_t d x0_hat / d x_t,    gamma_t = (1 - abar) / sqrt(abar)

(azula's `gamma_t = sigma_t^2 / alpha_t` in guidance/mmps.py and guidance/tmpd.py, tmpdjax's
`ratio = v / m` in tmpd/solvers.py). With J = d x0_hat / d x_t, a product with the covariance
is one Jacobian product through the network: the references use the VJP, Cov v = gamma J^T v
(`product="vjp"`, azula's `autograd.grad(x_hat, x_t, v)`, tmpdjax's `vjp_h_x_0`), or the JVP,
Cov v = gamma J v (`product="jvp"`: tmpdjax's dense KPDDPM matrix `H (d H x0 / d x)^T`, read
row-wise, is H J H^T). The exact posterior-mean Jacobian is symmetric and both agree; a learned
network's is not, so the choice is a static option. `tweedie` linearizes the denoiser once
(`jax.linearize`) and transposes that linearization for the VJP, so one forward pass serves
both products and every solver iteration.

For a measurement y ~ N(A x0, sigma^2 I), moment matching (a Gaussian p(x0 | x_t) with these
moments) gives

    x0_hat_y = x0_hat + Cov A^T (sigma^2 I + A Cov A^T)^-1 (y - A x0_hat)

and the samplers differ in how they treat C = sigma^2 I + A Cov A^T (`measurement_solve`):
"cg" / "gmres" truncated Krylov solves with a static iteration count (azula's linalg/solve.py
`cg` and `gmres`, every iteration run, float32 here where azula computes them in float64),
"dense" the exact solve of C built column by column (one product per measurement entry,
tmpdjax's `jnp.linalg.solve(C_yy, ...)`), "diag" the exact diagonal of C (tmpdjax's
KPDDPMdiag), "rowsum" the diagonal approximated by C's row sums, C 1 (azula's TMPDenoiser,
tmpdjax's KPDDPMplus). A nonlinear A enters linearized at x0_hat (azula's MMPS: `jvp` of A and
`autograd.grad(y_hat, x_hat, v)`); the diagonal forms need a linear A.

The Krylov solvers are written here rather than taken from jax.scipy.sparse.linalg: those spend
one more network product on A(x_init) at x_init = 0 and stop on a residual tolerance (a dynamic
trip count under vmap); here `iterations` is the exact number of products, as in azula.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.common import predict_x0

PRODUCTS = ("vjp", "jvp")
SOLVERS = ("cg", "gmres", "dense")
DIAGONALS = ("diag", "rowsum")


class Tweedie(NamedTuple):
    """The denoiser at x_t, linearized: x0_hat, the predict_x0 dict, gamma_t and J / J^T."""

    x0: jax.Array
    pred: dict
    gamma: jax.Array
    jvp: Callable  # v -> J v
    vjp: Callable  # v -> J^T v

    def cov(self, v, product: str = "vjp"):
        """Cov[x0 | x_t] v = gamma_t J^T v ("vjp") or gamma_t J v ("jvp")."""
        return self.gamma * (self.vjp(v) if product == "vjp" else self.jvp(v))


@contextlib.contextmanager
def _plain_ops():
    """models/fused.py's hand-written VJPs (on by default on XLA:CPU) have no JVP: a denoiser
    whose J v is needed is traced with the plain ops (same values, XLA's own transposes)."""
    from jaxdiff.models import fused

    before = fused.USE_CUSTOM_VJP
    fused.USE_CUSTOM_VJP = False
    try:
        yield
    finally:
        fused.USE_CUSTOM_VJP = before


def tweedie(
    model_fn, params, schedule, x, k, *, clip_denoised=False, remat=False, forward_mode=False
) -> Tweedie:
    """One model call at respaced step k, linearized in x_t (one forward pass). `forward_mode`:
    J v will be evaluated (product "jvp"), so the network is traced without custom VJPs."""

    def x0_fn(x_in):
        pred = predict_x0(
            model_fn, params, schedule, x_in, k, clip_denoised=clip_denoised, remat=remat
        )
        return pred["x0"], pred

    with _plain_ops() if forward_mode else contextlib.nullcontext():
        x0, jvp, pred = jax.linearize(x0_fn, x, has_aux=True)
    transpose = jax.linear_transpose(jvp, x)
    a_t = pred["c"]["alphas_cumprod"]
    gamma = (1 - a_t) / jnp.sqrt(a_t)
    return Tweedie(x0, pred, gamma, jvp, lambda v: transpose(v)[0])


class Linearized(NamedTuple):
    """A forward model at x0_hat: A(x0_hat), its JVP (A v) and VJP (A^T u)."""

    y_hat: jax.Array
    jvp: Callable
    vjp: Callable


def linearize_forward(forward, op_params, x0) -> Linearized:
    """A at x0_hat (A itself for a linear operator, its tangent map for a nonlinear one)."""
    y_hat, jvp = jax.linearize(lambda z: forward(op_params, z), x0)
    transpose = jax.linear_transpose(jvp, x0)
    return Linearized(y_hat, jvp, lambda u: transpose(u)[0])


def measurement_cov(tw: Tweedie, a: Linearized, sigma2, product: str = "vjp") -> Callable:
    """u -> C u = sigma^2 u + A Cov[x0 | x_t] A^T u (azula's `cov_y` of MMPSDenoiser)."""
    return lambda u: sigma2 * u + a.jvp(tw.cov(a.vjp(u), product))


def _dot(a, b):
    return jnp.sum(a * b)


def cg(matvec, b, iterations: int):
    """`iterations` conjugate-gradient steps from 0 (azula linalg/solve.py `cg`: every step
    run, p^T A p and r^T r floored at the dtype's eps so a converged or zero system stays 0)."""
    eps = jnp.finfo(b.dtype).eps

    def body(_, carry):
        x, r, rr, p = carry
        ap = matvec(p)
        alpha = rr / jnp.maximum(_dot(p, ap), eps)
        x = x + alpha * p
        r_new = r - alpha * ap
        rr_new = _dot(r_new, r_new)
        p = r_new + rr_new / jnp.maximum(rr, eps) * p
        return x, r_new, rr_new, p

    init = (jnp.zeros_like(b), b, _dot(b, b), b)
    return jax.lax.fori_loop(0, int(iterations), body, init)[0]


def gmres(matvec, b, iterations: int):
    """`iterations` GMRES steps from 0, one restart (azula linalg/solve.py `gmres`: Arnoldi with
    Givens rotations, norms floored at eps, the triangular solve shifted by eps I). The
    operator need not be symmetric (a learned denoiser's Jacobian is not)."""
    n = int(iterations)
    eps = jnp.finfo(b.dtype).eps

    def normalize(v):
        norm = jnp.sqrt(_dot(v, v))
        return v / jnp.maximum(norm, eps), norm

    v0, beta = normalize(b)
    basis, g = [v0], [beta]
    h = [[jnp.zeros((), b.dtype)] * n for _ in range(n + 1)]
    cs, ss = [None] * n, [None] * n
    for j in range(n):
        w = matvec(basis[j])
        for i in range(j + 1):
            h[i][j] = _dot(w, basis[i])
            w = w - h[i][j] * basis[i]
        w, h[j + 1][j] = normalize(w)
        basis.append(w)
        for i in range(j):
            h[i][j], h[i + 1][j] = (
                cs[i] * h[i][j] - ss[i] * h[i + 1][j],
                cs[i] * h[i + 1][j] + ss[i] * h[i][j],
            )
        c = jnp.maximum(jnp.sqrt(h[j][j] ** 2 + h[j + 1][j] ** 2), eps)
        cs[j], ss[j] = h[j][j] / c, -h[j + 1][j] / c
        h[j][j] = cs[j] * h[j][j] - ss[j] * h[j + 1][j]
        g.append(ss[j] * g[j])
        g[j] = cs[j] * g[j]
    hm = jnp.stack([jnp.stack(row) for row in h[:n]]) + eps * jnp.eye(n, dtype=b.dtype)
    coef = jax.scipy.linalg.solve_triangular(hm, jnp.stack(g[:n]), lower=False)
    return sum(c * v for c, v in zip(coef, basis[:n]))


def dense(matvec, b):
    """The exact solve with C built from one product per entry of b (tmpdjax's KPDDPM)."""
    m = b.size
    cols = jax.lax.map(lambda e: matvec(e.reshape(b.shape)).ravel(), jnp.eye(m, dtype=b.dtype))
    return jnp.linalg.solve(cols.T, b.ravel()).reshape(b.shape)


def solve(matvec, b, method: str, iterations: int):
    """C^-1 b by `method` ("cg", "gmres": `iterations` products; "dense": b.size products)."""
    if method == "cg":
        return cg(matvec, b, iterations)
    if method == "gmres":
        return gmres(matvec, b, iterations)
    if method == "dense":
        return dense(matvec, b)
    raise ValueError(f"solver must be one of {SOLVERS}, got {method!r}")


def diagonal(matvec, like, form: str, chunk: int = 64):
    """An approximation of C by its diagonal: "diag" the exact one (one product per
    measurement entry, `chunk` at a time; tmpdjax's KPDDPMdiag), "rowsum" C 1 (one product;
    azula's TMPDenoiser, tmpdjax's KPDDPMplus)."""
    if form == "rowsum":
        return matvec(jnp.ones_like(like))
    if form != "diag":
        raise ValueError(f"diagonal form must be one of {DIAGONALS}, got {form!r}")
    m = like.size

    def entry(i):
        e = jnp.zeros((m,), like.dtype).at[i].set(1).reshape(like.shape)
        return matvec(e).ravel()[i]

    return jax.lax.map(entry, jnp.arange(m), batch_size=min(chunk, m)).reshape(like.shape)


def moment_matched_x0(
    tw: Tweedie,
    a: Linearized,
    y,
    sigma2,
    *,
    covariance="cg",
    iterations=1,
    product="vjp",
    chunk=64,
) -> tuple[jax.Array, dict]:
    """x0_hat + Cov A^T C^-1 (y - A x0_hat) with C solved by `covariance` (a solver of SOLVERS
        or a diagonal form of DIAGONALS). Returns it and the step's records (the residual, the
        solve's result u and the correction). The diagonal forms take C's products with the VJP,
    as both references do (`product` applies to the solvers)."""
    matvec = measurement_cov(tw, a, sigma2, product)
    residual = y - a.y_hat
    if covariance in DIAGONALS:
        acov = lambda v: a.jvp(tw.cov(a.vjp(v), "vjp"))  # noqa: E731  (C - sigma^2 I)
        u = residual / (sigma2 + diagonal(acov, residual, covariance, chunk))
    else:
        u = solve(matvec, residual, covariance, iterations)
    # the correction's last product is always the VJP: Cov A^T u = gamma J^T A^T u (both
    # references differentiate y_hat = A(x0_hat(x_t)) with respect to x_t)
    correction = tw.gamma * tw.vjp(a.vjp(u))
    return tw.x0 + correction, {"residual": residual, "u": u, "correction": correction}


def moment_matching_sampler(name, model_fn, schedule, forward, defaults, shape, dtype, loop, *,
                            clip_denoised, remat, forward_mode, solve):  # fmt: skip
    """The one-image sampler shared by MMPS and TMPD: each step's x0 is moment-matched to y
    (`solve(tw, a, y, sigma2) -> (x0_y, record)`, the method's form of C), then a DDIM step from
    x0_y. `sample.update(params, x, k, z, y, op_params, hparams)` is one step alone
    (teacher-forced replays)."""
    from jaxdiff.diffusion.gaussian import ddim_step
    from jaxdiff.samplers.base import chain, initial_x
    from jaxdiff.samplers.common import check_measurement, resolve_hparams

    steps = np.arange(schedule.num_steps)[::-1]

    def update(params, x, k, z, y, op_params, h):
        eta, sigma2 = h["eta"].astype(dtype), jnp.square(h["sigma"].astype(dtype))
        tw = tweedie(
            model_fn, params, schedule, x, k, clip_denoised=clip_denoised, remat=remat,
            forward_mode=forward_mode,
        )  # fmt: skip
        a = linearize_forward(forward, op_params, tw.x0)
        x0_y, rec = solve(tw, a, y, sigma2)
        c = tw.pred["c"]
        a_t, a_s = c["alphas_cumprod"], c["alphas_cumprod_prev"]
        eps_y = (x - jnp.sqrt(a_t) * x0_y) / jnp.sqrt(1 - a_t)
        x_next = ddim_step(x0_y, eps_y, a_t, a_s, eta, z)
        record = {"x0_hat": tw.x0, "x0_y": x0_y, "residual": rec["residual"], "u": rec["u"],
                  "eps_y": eps_y}  # fmt: skip
        return x_next.astype(dtype), record

    def prepare(y, op_params, hparams):
        h = resolve_hparams(defaults, hparams, name)
        if y is None:
            raise ValueError(f"{name}: needs the measurement y")
        y = jnp.asarray(y, dtype)
        check_measurement(forward, op_params, jnp.zeros(shape, dtype), y, name)
        return h, y

    def sample(params, key, y=None, op_params=None, hparams=None, replay=None, valid=True):
        del valid
        h, y = prepare(y, op_params, hparams)
        x_T, k_loop = initial_x(key, replay, shape, dtype, name)

        def step(x, k, z, state):
            x_next, record = update(params, x, k, z, y, op_params, h)
            return x_next, state, record

        return chain(step, x_T, steps, key=k_loop, replay=replay, loop=loop, label=name)

    def one_step(params, x, k, z, y, op_params=None, hparams=None):
        h, y = prepare(y, op_params, hparams)
        return update(params, jnp.asarray(x, dtype), k, jnp.asarray(z, dtype), y, op_params, h)

    sample.update = one_step
    return sample
