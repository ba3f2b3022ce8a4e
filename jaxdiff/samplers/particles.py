"""Particles for sequential Monte Carlo samplers (MCG-diff, FPS-SMC, TDS), written once.

A particle sampler is still written for ONE image: its N particles are a leading axis of x
inside the sample function, (N, H, W, C), so `batched` maps over images as for every other
method and N (`num_particles`) is a static option. The model sees the N particles as one batch.

- Log-weights are float32, normalised by log-sum-exp (`normalize`); the effective sample size
  ESS = 1 / sum w_i^2 (`ess`) is recorded at every step, before that step's resampling.
- Resampling is inverse-CDF on uniforms (`ancestors`): "multinomial" uses N independent
  uniforms, "systematic" one uniform u and the grid (i + u) / N (Douc, Cappe & Moulines 2005).
  The uniforms come from the step's key (`resample_draws`, the same layout for both schemes), so
  a replay can feed the recorded uniforms, or the recorded ancestor indices themselves (a
  reference that resamples with torch.multinomial: its uniforms are not exposed).
- `particle_chain` runs the shared loop (samplers/loop.run_chain) with the log-weights, the ESS and
  the log-weights' history in the loop state, and returns a SampleResult whose x0 is the stated
  estimator ("mean": the self-normalised weighted mean; "draw": one particle drawn by weight,
  from the image's own key), with the particles, their log-weights and the ESS per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.common import SampleResult
from jaxdiff.samplers.loop import run_chain, snapshot_steps

SCHEMES = ("multinomial", "systematic")
PARTICLE_OPTIONS = ("num_particles", "resampling", "estimator")
"""The static options of every particle sampler; the driver records them with its results."""
ESTIMATORS = ("mean", "draw")
_DRAW_ONE = 0x5EED  # fold_in tag of the key that picks the "draw" estimator's particle


def check_options(where: str, num_particles, resampling: str, estimator: str) -> int:
    """The static particle options, one clear ValueError naming a bad one."""
    if isinstance(num_particles, bool) or int(num_particles) != num_particles:
        raise ValueError(f"{where}: num_particles must be an integer, got {num_particles!r}")
    if int(num_particles) < 1:
        raise ValueError(f"{where}: num_particles must be >= 1, got {num_particles}")
    if resampling not in SCHEMES:
        raise ValueError(f"{where}: resampling must be one of {SCHEMES}, got {resampling!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"{where}: estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return int(num_particles)


def normalize(logw):
    """log w - logsumexp(log w), in float32 (all -inf stays uniform rather than NaN). Formed as
    (log w - max) - log sum exp(log w - max): logsumexp adds log sum back onto the max, which
    rounds it away when |log w| is large (equal weights of 4e11 normalised to 0, not -log N)."""
    logw = jnp.asarray(logw, jnp.float32)
    mx = jnp.max(logw)
    ok = jnp.isfinite(mx)
    shifted = logw - jnp.where(ok, mx, 0.0)
    uniform = jnp.full_like(logw, -jnp.log(float(logw.shape[0])))
    return jnp.where(ok, shifted - jnp.log(jnp.sum(jnp.exp(shifted))), uniform)


def weights(logw):
    """The normalised weights (sum 1)."""
    return jnp.exp(normalize(logw))


def ess(logw):
    """Effective sample size 1 / sum w_i^2 of the normalised weights, in [1, N]."""
    w = weights(logw)
    return 1.0 / jnp.sum(w * w)


def resample_draws(key, n: int) -> dict:
    """One step's resampling draws: N uniforms (systematic reads the first) and the ancestor
    slot (-1: compute from the uniforms; a replay sets recorded indices there)."""
    return {
        "u": jax.random.uniform(key, (n,), jnp.float32),
        "ancestors": jnp.full((n,), -1, jnp.int32),
    }


def ancestors(logw, draws: dict, scheme: str):
    """Ancestor index of each new particle: inverse CDF of the weights at the scheme's points,
    unless `draws["ancestors"]` holds recorded indices (>= 0)."""
    if scheme not in SCHEMES:
        raise ValueError(f"resampling must be one of {SCHEMES}, got {scheme!r}")
    n = logw.shape[0]
    u = jnp.asarray(draws["u"], jnp.float32)
    if scheme == "systematic":
        u = (jnp.arange(n, dtype=jnp.float32) + u[0]) / n
    cdf = jnp.cumsum(weights(logw))
    idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
    idx = jnp.clip(idx, 0, n - 1).astype(jnp.int32)
    given = jnp.asarray(draws.get("ancestors", idx), jnp.int32)
    return jnp.where(given >= 0, given, idx)


def take(tree, idx):
    """Every leaf's leading (particle) axis gathered at `idx`."""
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


def resample(tree, logw, draws: dict, scheme: str, threshold=None):
    """Resample the particles `tree` (leading axis N) by their weights.

    threshold (traced, in [0, 1]; None = always): resample only when ESS < threshold * N (an
    adaptive SMC step). Returns (tree, log-weights after (uniform where resampled), ancestor
    indices (arange where not), ESS before)."""
    logw = normalize(logw)
    n = logw.shape[0]
    e = ess(logw)
    idx = ancestors(logw, draws, scheme)
    flat = jnp.full_like(logw, -jnp.log(float(n)))
    if threshold is None:
        return take(tree, idx), flat, idx, e
    do = e < jnp.asarray(threshold, jnp.float32) * n
    idx = jnp.where(do, idx, jnp.arange(n, dtype=jnp.int32))
    return take(tree, idx), jnp.where(do, flat, logw), idx, e


def weighted_mean(x, logw):
    """The self-normalised importance estimate sum_i w_i x_i over the leading axis."""
    w = weights(logw).astype(x.dtype)
    return jnp.tensordot(w, x, axes=(0, 0))


def weighted_cov(x, logw):
    """The weighted covariance of the flattened particles (N, D) -> (D, D)."""
    flat = x.reshape(x.shape[0], -1)
    w = weights(logw).astype(x.dtype)
    d = flat - weighted_mean(flat, logw)
    return (d * w[:, None]).T @ d


def draw_one(key, x, logw):
    """One particle drawn with probability w_i."""
    i = jax.random.categorical(key, normalize(logw))
    return x[i]


def estimate(estimator: str, x, logw, key):
    """The reconstruction from the particles: "mean" or "draw" (see the module docstring)."""
    if estimator == "mean":
        return weighted_mean(x, logw)
    if estimator == "draw":
        return draw_one(jax.random.fold_in(key, _DRAW_ONE), x, logw)
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def particle_chain(
    step,
    x_init,
    steps,
    *,
    key,
    replay,
    loop,
    label,
    estimator: str,
    logw=None,
    state=None,
    decode=None,
    **kw,
) -> SampleResult:
    """The shared loop over particles.

    step(x, logw, k, z, state) -> (x_next, logw_next, state_next, ess, record): x (N, H, W, C),
    logw (N,) float32, ess the step's effective sample size before its resampling. `key` is
    the image's loop key (the "draw" estimator folds a tag into it). Snapshots are of the
    estimate at that step, the trajectory (keep_trajectory) keeps every step's particles,
    log-weights and records. The result's x0 is the estimate; particles, log_weights and ess
    (per sampling step) are returned alongside. `decode(particle) -> image` maps a particle
    that is not an image (MCG-diff's spectral vectors) to one, applied to the estimate, the
    snapshots and the returned particles (after estimating: decode may be nonlinear).
    """
    n = x_init.shape[0]
    steps = np.asarray(steps)
    logw0 = normalize(jnp.zeros((n,), jnp.float32) if logw is None else logw)
    num = int(steps.shape[0])
    carry0 = {
        "logw": logw0,
        "ess": jnp.zeros((num,), jnp.float32),
        "hist": jnp.zeros((num, n), jnp.float32),
        "i": jnp.asarray(0, jnp.int32),
        "user": state,
    }

    def wrapped(x, k, z, st):
        x_next, logw_next, user, e, record = step(x, st["logw"], k, z, st["user"])
        logw_next = normalize(logw_next)
        i = st["i"]
        new = {
            "logw": logw_next,
            "ess": st["ess"].at[i].set(jnp.asarray(e, jnp.float32)),
            "hist": st["hist"].at[i].set(logw_next),
            "i": i + 1,
            "user": user,
        }
        return x_next, new, {**record, "log_weights": logw_next, "ess": e}

    out = run_chain(
        wrapped,
        x_init,
        steps,
        key=key,
        noise=(replay or {}).get("noise"),
        state=carry0,
        keep_trajectory=loop.keep_trajectory,
        snapshot_every=loop.snapshot_every,
        progress_every=loop.progress_every,
        label=label,
        **kw,
    )
    st = out.state
    dec = (lambda v: v) if decode is None else decode
    x0 = dec(estimate(estimator, out.x, st["logw"], key))
    snaps = out.snapshots
    if snaps is not None:
        at = snapshot_steps(num, int(loop.snapshot_every))
        snaps = jax.vmap(lambda s, lw: dec(estimate(estimator, s, lw, key)))(snaps, st["hist"][at])
    return SampleResult(
        x0,
        out.diverged_at,
        snaps,
        out.trajectory,
        particles=out.x if decode is None else jax.vmap(decode)(out.x),
        log_weights=st["logw"],
        ess=st["ess"],
    )
