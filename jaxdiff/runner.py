"""Compiled, sharded batches of the experiment pipeline, and the metrics on them.

`BatchRunner(exp, batch_size)` compiles the vmapped pipeline once (the batch is always padded to
`batch_size`, a multiple of the device count, so every call reuses the one program) and shards
the image axis over every device. `sweep=True` adds a leading axis of hyperparameter values to
the same program: every value over every image in one call.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff.experiment import NOISE_SIGMA, Experiment
from jaxdiff.sharding import AXIS, batch_mesh

FUN_NAME = "reconstruct_batch"  # the compiled program's name (counted by the sweep test)
# Compiled programs of this process, by what they compute (Experiment.program_key: everything
# but the data, seed and traced hyperparameter values) and the batch shapes: a rerun or another
# value of a traced hyperparameter (the demo run twice, a sweep checked against single runs)
# reuses the program instead of compiling it again.
_PROGRAMS: dict = {}


def image_keys(seed: int, indices) -> np.ndarray:
    """Per-image keys fold_in(PRNGKey(seed), index), as a (N, 2) uint32 host array."""
    base = jax.random.PRNGKey(int(seed))
    idx = jnp.asarray(np.asarray(indices, np.int32))
    return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(idx))


def round_batch(batch_size: int, n_images: int) -> int:
    """`batch_size` (0 = min(N, 8)) rounded up to a multiple of the device count."""
    n_dev = jax.device_count()
    b = batch_size or min(max(n_images, 1), 8)
    return -(-b // n_dev) * n_dev


class BatchRunner:
    """`runner(keys, x, hparams=None) -> {"y", "x_hat", "diverged"}` (numpy, real images only).

    keys (n, 2), x (n, S, S, 3) with n <= batch_size; hparams overrides the experiment's defaults
    (scalars; with `sweep=True` 1-D arrays of equal length V, and outputs gain a leading V axis).
    """

    def __init__(self, exp: Experiment, batch_size: int, *, sweep: bool = False):
        self.exp = exp
        self.batch_size = int(batch_size)
        if self.batch_size % jax.device_count():
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of the device count "
                f"{jax.device_count()}"
            )
        self.sweep = sweep
        self.compile_seconds = 0.0
        self._compiled = None
        self._host_method = None
        one = exp.pipeline()
        if exp.method.jittable:
            fn = one
        else:  # host-side baseline: only the measurement is compiled; the method runs eagerly

            def fn(params, key, x, hparams, valid):
                y, op_params, _ = one.measure(key, x, hparams)
                return {"y": y, "op_params": op_params}

            self._host_method = exp.method
        inner = jax.vmap(fn, in_axes=(None, 0, 0, None, 0), axis_name=AXIS)
        if sweep:
            inner = jax.vmap(inner, in_axes=(None, None, None, 0, None))

        def reconstruct_batch(params, keys, x, hparams, valid):
            return inner(params, keys, x, hparams, valid)

        self._fn = jax.jit(reconstruct_batch)
        mesh = batch_mesh()
        self._batch_sharding = NamedSharding(mesh, PartitionSpec(AXIS))
        self._replicated = NamedSharding(mesh, PartitionSpec())

    def hparams(self, overrides=None) -> dict:
        h = dict(self.exp.default_hparams())
        unknown = sorted(set(overrides or {}) - set(h))
        if unknown and self.exp.method.kind != "sampler":  # samplers name their own unknowns
            raise ValueError(
                f"{self.exp.method.name}: {unknown} not traced hyperparameter(s); "
                f"traced: {sorted(h)}"
            )
        h.update(overrides or {})
        if self.sweep:
            n = {len(np.atleast_1d(v)) for k, v in (overrides or {}).items()}
            if len(n) != 1:
                raise ValueError("sweep: give every swept hyperparameter the same number of values")
            (n,) = n
            h = {
                k: np.asarray(v, np.float32) if k in overrides else np.full((n,), v, np.float32)
                for k, v in h.items()
            }
        else:
            h = {k: np.float32(v) for k, v in h.items()}
        return h

    def _place(self, keys, x):
        n = keys.shape[0]
        if n > self.batch_size:
            raise ValueError(f"{n} images for a batch of {self.batch_size}")
        pad = self.batch_size - n
        valid = np.arange(self.batch_size) < n
        if pad:  # padding repeats the last image; `valid` keeps it out of batch-coupled norms
            keys = np.concatenate([keys, np.repeat(keys[-1:], pad, 0)])
            x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
        put = functools.partial(jax.device_put, device=self._batch_sharding)
        return put(keys), put(np.asarray(x, np.float32)), put(valid), n

    def __call__(self, keys, x, hparams=None) -> dict:
        keys, x, valid, n = self._place(np.asarray(keys), np.asarray(x))
        h = jax.device_put(self.hparams(hparams), self._replicated)
        params = self.exp.params
        if self._compiled is None:
            shapes = tuple(sorted((k, np.shape(v)) for k, v in h.items()))
            key = (self.exp.program_key(), self.batch_size, self.sweep, shapes, jax.device_count())
            self._compiled = _PROGRAMS.get(key)
            if self._compiled is None:
                t0 = time.perf_counter()
                self._compiled = self._fn.lower(params, keys, x, h, valid).compile()
                self.compile_seconds = time.perf_counter() - t0
                _PROGRAMS[key] = self._compiled
        out = self._compiled(params, keys, x, h, valid)
        if self._host_method is not None:
            out = self._run_host(out, h, n)
        out = jax.device_get(out)
        cut = (slice(None), slice(0, n)) if self.sweep else (slice(0, n),)
        return {k: np.asarray(v)[cut] for k, v in out.items() if k != "op_params"}

    def _run_host(self, out, h, n):
        """Eager, image by image (and value by value): OpenCV cannot be traced."""
        if self.sweep:
            raise ValueError(f"{self._host_method.name} runs on the host: it cannot be swept")
        ys = np.asarray(jax.device_get(out["y"]))
        op_params = jax.device_get(out["op_params"])
        x_hat = []
        for i in range(self.batch_size):
            if i >= n:
                x_hat.append(x_hat[-1])
                continue
            op_i = jax.tree.map(lambda a, i=i: a[i], op_params)
            x_i, _ = self._host_method.fn(None, None, ys[i], op_i, h, True)
            x_hat.append(np.asarray(x_i, np.float32))
        return {"y": ys, "x_hat": np.stack(x_hat), "diverged": np.full(ys.shape[0], -1, np.int32)}


__all__ = [
    "FUN_NAME",
    "NOISE_SIGMA",
    "BatchRunner",
    "image_keys",
    "round_batch",
]
