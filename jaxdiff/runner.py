"""The experiment's pipeline as a batch program: per-image keys, the global batch size, and
`BatchRunner`, which vmaps `Experiment.pipeline` over images (and, with `sweep=True`, over
hyperparameter values: every value over every image in one call) and runs it through the one
batching path, jaxdiff.sharding.ShardedBatch (padding to `batch_size`, a multiple of the device
count, so every call reuses one compiled program; images split over every device of every process).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.experiment import NOISE_SIGMA, Experiment
from jaxdiff.samplers import BATCH_AXIS
from jaxdiff.sharding import ShardedBatch

FUN_NAME = "reconstruct_batch"  # the compiled program's name (counted by the sweep test)


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
    """`runner(keys, x, hparams=None) -> {"y", "x_hat", "diverged"}` (numpy, this process's
    images only) through the one batching path (jaxdiff.sharding.ShardedBatch).

    keys (n, 2), x (n, S, S, 3): this process's images, n <= batch_size / process_count; hparams
    overrides the experiment's defaults (scalars; with `sweep=True` 1-D arrays of equal length V,
    and outputs gain a leading V axis).
    """

    def __init__(self, exp: Experiment, batch_size: int, *, sweep: bool = False):
        self.exp = exp
        self.batch_size = int(batch_size)
        self.sweep = sweep
        self._host_method = None
        one = exp.pipeline()
        if exp.method.jittable:
            fn = one
        else:  # host-side baseline: only the measurement is compiled; the method runs eagerly

            def fn(params, key, x, hparams, valid):
                y, op_params, _ = one.measure(key, x, hparams)
                return {"y": y, "op_params": op_params}

            self._host_method = exp.method
        inner = jax.vmap(fn, in_axes=(None, 0, 0, None, 0), axis_name=BATCH_AXIS)
        if sweep:
            inner = jax.vmap(inner, in_axes=(None, None, None, 0, None))

        def reconstruct_batch(same, per_image, valid):
            return inner(same["params"], per_image["keys"], per_image["x"], same["h"], valid)

        # shared by every BatchRunner of an equal Experiment.program_key (the config without the
        # data, seed and traced values): a rerun or another hyperparameter value compiles nothing
        key = (exp.program_key(), sweep, exp.method.jittable)
        self._batch = ShardedBatch(
            reconstruct_batch, batch_size=self.batch_size, out_axis=int(sweep), cache_key=key
        )
        self._params = self._batch.replicate(exp.params)  # once, not per batch

    @property
    def compile_seconds(self) -> float:
        return self._batch.compile_seconds

    @property
    def wait_seconds(self) -> float:
        """Time spent waiting for another thread's program (jaxdiff.sharding.EXECUTION)."""
        return self._batch.wait_seconds

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

    def __call__(self, keys, x, hparams=None) -> dict:
        keys, x = np.asarray(keys), np.asarray(x, np.float32)
        n = keys.shape[0]
        same = {"params": self._params, "h": self.hparams(hparams)}
        out = jax.tree.map(np.asarray, jax.device_get(self._batch(same, {"keys": keys, "x": x})))
        if self._host_method is not None:
            out = self._run_host(out, same["h"], n)
        return {k: v for k, v in out.items() if k != "op_params"}

    def _run_host(self, out, h, n):
        """Eager, image by image: OpenCV cannot be traced."""
        if self.sweep:
            raise ValueError(f"{self._host_method.name} runs on the host: it cannot be swept")
        x_hat = []
        for i in range(n):
            op_i = jax.tree.map(lambda a, i=i: a[i], out["op_params"])
            x_i, _ = self._host_method.fn(None, None, out["y"][i], op_i, h, True)
            x_hat.append(np.asarray(x_i, np.float32))
        return {"y": out["y"], "x_hat": np.stack(x_hat), "diverged": np.full(n, -1, np.int32)}


__all__ = [
    "FUN_NAME",
    "NOISE_SIGMA",
    "BatchRunner",
    "image_keys",
    "round_batch",
]
