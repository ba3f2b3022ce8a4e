"""The Moore-Penrose pseudo-inverse A^+ y of a linear operator, for ONE measurement.

PiGDM (Song et al., ICLR 2023) guides with A^+ (y - A x0_hat); DDNM-like projections need the
same. Two ways, picked per operator (docs/methods.md):

- "svd": the operator's SVD form (`op.svd.H_pinv`, jaxdiff/operators/svd.py), the closed form
  V diag(1/s) U^T with 1/0 -> 0 (inpainting, super-resolution, separable blur, colorization);
- "cg": conjugate gradients on the normal equations A^T A x = A^T y started at x = 0, matrix-free
  with `op.apply` / `op.adjoint` (motion blur, arbitrary kernels). Every iterate lies in the
  Krylov space of A^T A and A^T y, i.e. in range(A^T), so the limit is the minimum-norm
  least-squares solution, which IS A^+ y, also when y is not in range(A) (noise in inpainting
  holes) where CG on A A^T v = y would not converge. A finite `maxiter` is Landweber-like
  regularisation of the tiny singular values of a blur (the ones A^+ would divide by).

None of the jaxdiff blurs is circular (they reflect-pad, as DPS does), so no FFT form is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PINV_METHODS = ("auto", "svd", "cg")


def make_pinv(operator, *, method: str = "auto", maxiter: int = 200, tol: float = 1e-6):
    """`pinv(op_params, y) -> x` (the operator's image shape) computing A^+ y.

    method: "svd" (needs `operator.svd`), "cg" (needs `apply` / `adjoint`), "auto" (svd when the
    operator has one, else cg). `maxiter` / `tol` (relative residual of the normal equations)
    only apply to "cg". Raises ValueError for a nonlinear operator or an unknown method.
    """
    if method not in PINV_METHODS:
        raise ValueError(f"pinv: unknown method {method!r}; known: {', '.join(PINV_METHODS)}")
    name = getattr(operator, "name", type(operator).__name__)
    if operator is None or not hasattr(operator, "apply"):
        raise ValueError(f"pinv: needs an Operator (apply / adjoint), got {type(operator)}")
    if not getattr(operator, "linear", False):
        raise ValueError(f"pinv: {name!r} is nonlinear; a pseudo-inverse needs a linear operator")
    svd = getattr(operator, "svd", None)
    if method == "svd" and svd is None:
        raise ValueError(
            f"pinv: method 'svd' needs an operator with an SVD form; {name!r} has none"
        )
    if method == "svd" or (method == "auto" and svd is not None):
        return svd.H_pinv
    if int(maxiter) < 1:
        raise ValueError(f"pinv: maxiter must be >= 1, got {maxiter}")

    def pinv(op_params, y):
        def normal(x):
            return operator.adjoint(op_params, operator.apply(op_params, x))

        b = operator.adjoint(op_params, y)
        x, _ = jax.scipy.sparse.linalg.cg(
            normal, b, x0=jnp.zeros_like(b), tol=tol, maxiter=int(maxiter)
        )
        return x

    return pinv


def make_tikhonov(operator, *, method: str = "auto", maxiter: int = 200, tol: float = 1e-6):
    """`solve(op_params, r, lam) -> x` = (A^T A + lam I)^-1 A^T r = A^T (A A^T + lam I)^-1 r, the
    regularised pseudo-inverse of PiGDM's noisy guidance (lam = sigma_y^2 / r_t^2; lam = 0 is
    A^+ r). "svd": V diag(s / (s^2 + lam)) U^T r (0 where s = 0); "cg": CG on the SPD system
    (A^T A + lam I) x = A^T r from x = 0. `lam` may be traced."""
    pinv = make_pinv(operator, method=method, maxiter=maxiter, tol=tol)  # checks the operator
    svd = getattr(operator, "svd", None)
    if method == "svd" or (method == "auto" and svd is not None):

        def solve_svd(op_params, r, lam):
            s = svd.singulars(op_params).astype(r.dtype)
            nz = s != 0
            w = jnp.where(nz, s / jnp.where(nz, s * s + lam, 1), 0) * svd.Ut(op_params, r)
            return svd.V(op_params, svd.pad(w))

        return solve_svd
    del pinv

    def solve_cg(op_params, r, lam):
        def normal(x):
            return operator.adjoint(op_params, operator.apply(op_params, x)) + lam * x

        b = operator.adjoint(op_params, r)
        x, _ = jax.scipy.sparse.linalg.cg(
            normal, b, x0=jnp.zeros_like(b), tol=tol, maxiter=int(maxiter)
        )
        return x

    return solve_cg
