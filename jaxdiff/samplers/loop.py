"""The one `lax.scan` over time shared by every sampler.

A sampler supplies `step_fn(x, k, z, state) -> (x_next, state_next, record)` for one image at
respaced step k with this step's random draws z; the loop supplies the rest:

- noise: z comes from `noise[i]` when a recorded trajectory is replayed (that is how parity with
  the PyTorch fixtures is proven), else `draw(fold_in(key, k), x)` (default: one standard normal
  of x's shape; a method with several draws per step returns a pytree), so a result depends only
  on its own key (never on batch size, device count or the other images);
- the NaN/Inf guard: an image whose x goes non-finite is frozen at its last finite value and
  `diverged_at` records the sampling step; nothing raises inside the compiled function, the
  caller raises `DivergenceError` (see `jaxdiff.samplers.raise_on_divergence`) while keeping
  the other images' results;
- snapshots of x every `snapshot_every` steps (a fixed-size buffer, written under a `lax.cond`
  on the step counter, which stays unbatched under vmap); the full per-step trajectory only when
  `keep_trajectory` (otherwise nothing per step leaves the scan and XLA drops it);
- a progress bar fed by `jax.debug.callback` every `progress_every` steps (unordered, no host
  sync per step; the callback's argument is the unbatched step counter, so a vmapped batch
  still ticks once).
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LoopOutput(NamedTuple):
    x: jax.Array
    state: object
    diverged_at: jax.Array
    snapshots: jax.Array | None
    trajectory: dict | None


def snapshot_steps(num_steps: int, every: int) -> np.ndarray:
    """Sampling-step indices after which a snapshot is taken (every `every`, and the last)."""
    if every <= 0:
        return np.zeros((0,), np.int64)
    steps = list(range(every - 1, num_steps, every))
    if not steps or steps[-1] != num_steps - 1:
        steps.append(num_steps - 1)
    return np.asarray(steps, np.int64)


def run_chain(
    step_fn,
    x_init,
    steps,
    *,
    key,
    noise=None,
    state=None,
    keep_trajectory: bool = False,
    snapshot_every: int = 0,
    progress_every: int = 0,
    label: str = "sampling",
    draw=None,
) -> LoopOutput:
    """Scan `step_fn` over `steps` (respaced indices in sampling order, static)."""
    if draw is None:
        draw = _standard_normal
    steps = np.asarray(steps, dtype=np.int64)
    n = int(steps.shape[0])
    if n == 0:
        raise ValueError(f"{label}: no steps to run")
    x_init = jnp.asarray(x_init)
    if noise is not None:
        want = jax.eval_shape(draw, jax.random.key(0), x_init)
        noise = jax.tree.map(lambda a, w: jnp.asarray(a, w.dtype), noise, want)
        got = jax.tree.map(lambda a: tuple(a.shape), noise)
        expected = jax.tree.map(lambda w: (n, *w.shape), want)
        if got != expected:
            raise ValueError(
                f"{label}: replayed noise has shape {got}, expected {expected} "
                "(one draw per step, for one image)"
            )
    snaps_at = snapshot_steps(n, int(snapshot_every))
    slot_of_step = np.full((n,), -1, np.int32)
    slot_of_step[snaps_at] = np.arange(len(snaps_at), dtype=np.int32)
    snaps = jnp.zeros((len(snaps_at), *x_init.shape), x_init.dtype) if len(snaps_at) else None
    slot_table = jnp.asarray(slot_of_step)
    ticker = _Ticker(label, n) if progress_every and progress_every > 0 else None

    def body(carry, xs):
        x, st, diverged_at, buf = carry
        i, k, z = xs
        if z is None:
            z = draw(jax.random.fold_in(key, k), x)
        if ticker is not None:
            jax.lax.cond(
                (i % progress_every == 0) | (i == n - 1),
                lambda: jax.debug.callback(ticker, i, ordered=False),
                lambda: None,
            )
        x_new, st_new, record = step_fn(x, k, z, st)
        if x_new.shape != x.shape or x_new.dtype != x.dtype:
            raise ValueError(
                f"{label}: a step changed x from {x.shape} {x.dtype} to {x_new.shape} {x_new.dtype}"
            )
        healthy = diverged_at < 0
        finite = jnp.all(jnp.isfinite(x_new))
        keep = healthy & finite
        diverged_at = jnp.where(healthy & ~finite, i.astype(jnp.int32), diverged_at)
        x = jnp.where(keep, x_new, x)
        st = jax.tree.map(lambda new, old: jnp.where(keep, new, old), st_new, st)
        if buf is not None:
            slot = slot_table[i]
            buf = jax.lax.cond(
                slot >= 0,
                lambda b: jax.lax.dynamic_update_index_in_dim(b, x, slot, 0),
                lambda b: b,
                buf,
            )
        out = None
        if keep_trajectory:
            out = {"x": x, **record}
        return (x, st, diverged_at, buf), out

    xs = (jnp.arange(n, dtype=jnp.int32), jnp.asarray(steps, jnp.int32), noise)
    init = (x_init, state, jnp.asarray(-1, jnp.int32), snaps)
    (x, state, diverged_at, snaps), traj = jax.lax.scan(body, init, xs)
    return LoopOutput(x, state, diverged_at, snaps, traj)


def _standard_normal(key, x):
    return jax.random.normal(key, x.shape, x.dtype)


def progress_interval(num_steps: int, ticks: int = 50) -> int:
    """`progress_every` for about `ticks` updates per pass: a host callback every step costs
    little on a CPU but a device-to-host transfer per step on an accelerator."""
    return max(1, -(-int(num_steps) // max(int(ticks), 1)))


class _Ticker:
    """Host side of the progress bar (tqdm when installed, else a line on stderr).

    Callbacks are unordered and, when the batch is sharded, come once per device: a pass
    starts at step 0 only when no pass is running, a step at or below the one shown is
    ignored, and the last step closes the pass (`completed` counts them)."""

    def __init__(self, label: str, total: int, file=None):
        self.label, self.total, self.file = label, total, file
        self.bar, self.shown, self.completed = None, 0, 0

    def __call__(self, i) -> None:
        i = int(i)
        if self.shown == 0 and i != 0:  # a late tick of a pass that already ended
            return
        if i + 1 <= self.shown:  # another device's (or an out-of-order) tick
            return
        self.shown = i + 1
        self._show(i + 1)
        if self.shown >= self.total:
            self.completed += 1
            self.shown = 0
            self._close()

    def _show(self, n: int) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            print(f"{self.label}: step {n}/{self.total}", file=self.file or sys.stderr, flush=True)
            return
        if self.bar is None:
            self.bar = tqdm(
                total=self.total, desc=self.label, unit="step", leave=False, file=self.file
            )
        self.bar.update(n - self.bar.n)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
