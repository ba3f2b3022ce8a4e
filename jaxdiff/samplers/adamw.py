"""AdamW with early stopping as one `lax.while_loop`: the hard data-consistency optimisations of
ReSample (soominkwon/resample ldm/models/diffusion/ddim.py pixel_optimization and
latent_optimization), for ONE image.

The update is torch.optim.AdamW's (defaults beta1 0.9, beta2 0.999, eps 1e-8, weight_decay
0.01), in its op order: x <- x (1 - lr wd); m <- m + (g - m)(1 - beta1); v <- beta2 v +
(1 - beta2) g^2; x <- x - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps).

Stopping, checked after each step on the loss evaluated BEFORE it (as the official loops do):
the loss below `tol`, or `max_iters` steps, or (with `window`) from step `window` on, the loss
above the one `window` steps earlier (latent_optimization's list of 200 losses).

With `batch_sum` (v -> the sum of v over the batch's images, a psum over the "batch" axis) the
loss is the official one of the whole batch: the mean of the images' losses stops the loop for
all of them, and each image's gradient is its own loss's over the image count (the official
MSELoss over the batch tensor; AdamW is elementwise, so the images still update apart).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AdamWResult(NamedTuple):
    x: jax.Array  # the optimised variable (after `steps` updates)
    steps: jax.Array  # number of updates taken
    loss: jax.Array  # the loss evaluated before the last update
    first_loss: jax.Array  # the loss at the start (latent_optimization's init_loss)


def adamw_minimize(
    loss_fn,
    x0,
    *,
    lr,
    tol,
    max_iters: int,
    window: int | None = None,
    weight_decay=0.01,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    batch_sum=None,
) -> AdamWResult:
    """Minimise `loss_fn(x) -> scalar` from x0 (lr, tol, weight_decay may be traced); with
    `batch_sum`, the batch's mean loss (see the module docstring)."""
    if int(max_iters) < 1:
        raise ValueError(f"adamw: max_iters must be >= 1, got {max_iters!r}")
    if window is not None and int(window) < 1:
        raise ValueError(f"adamw: window must be >= 1 or None, got {window!r}")
    dtype = x0.dtype
    lr = jnp.asarray(lr, dtype)
    decay = 1 - lr * jnp.asarray(weight_decay, dtype)
    b1, b2 = jnp.asarray(beta1, dtype), jnp.asarray(beta2, dtype)
    ring = jnp.zeros((int(window) if window else 1,), dtype)
    value_and_grad = jax.value_and_grad(loss_fn)
    zero = jnp.zeros((), dtype)

    def cond(c):
        return ~c["done"]

    def body(c):
        loss, g = value_and_grad(c["x"])
        if batch_sum is not None:  # the cotangent is pulled back per image, not through the psum
            count = batch_sum(jnp.ones((), dtype))
            loss, g = batch_sum(loss) / count, g / count
        t = c["t"] + 1
        x = c["x"] * decay
        m = c["m"] + (g - c["m"]) * (1 - b1)
        v = c["v"] * b2 + (1 - b2) * g * g
        tf = t.astype(dtype)
        step_size = lr / (1 - b1**tf)
        denom = jnp.sqrt(v) / jnp.sqrt(1 - b2**tf) + jnp.asarray(eps, dtype)
        x = x - step_size * (m / denom)
        done = (loss < tol) | (t >= int(max_iters))
        ring_ = c["ring"]
        if window:
            slot = (t - 1) % int(window)
            done = done | ((t - 1 >= int(window)) & (ring_[slot] < loss))
            ring_ = ring_.at[slot].set(loss)
        first = jnp.where(t == 1, loss, c["first"])
        return {"x": x, "m": m, "v": v, "t": t, "done": done, "ring": ring_, "loss": loss,
                "first": first}  # fmt: skip

    init = {"x": x0, "m": jnp.zeros_like(x0), "v": jnp.zeros_like(x0),
            "t": jnp.zeros((), jnp.int32), "done": jnp.zeros((), bool), "ring": ring,
            "loss": zero, "first": zero}  # fmt: skip
    out = jax.lax.while_loop(cond, body, init)
    return AdamWResult(out["x"], out["t"], out["loss"], out["first"])
