"""Batches (and hyperparameter sweeps) across devices with `jax.sharding`.

The samplers are per-image functions vmapped over a "batch" axis, so sharding is data placement
only: the image axis is split over a 1-D device mesh (Mesh + NamedSharding), parameters and
hyperparameters are replicated, and XLA partitions the one compiled program. A batch that does
not divide the device count is padded (copies of the last image, marked `valid=False` so the
batch-coupled DPS norm ignores them) and the padding is dropped from the results. Because each
image's draws depend only on its own key, results do not depend on the device count beyond
float32 rounding (XLA's summation order follows the per-device batch shape).

Several hosts: call `initialize_distributed()` first (opt-in; it wraps
`jax.distributed.initialize`), then give each process its own slice of the batch: inputs are
assembled with `jax.make_array_from_process_local_data` and results gathered to every process.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.samplers import BATCH_AXIS, batched

AXIS = BATCH_AXIS  # the mesh axis is the images' vmap axis


def initialize_distributed(**kwargs) -> None:
    """Opt-in multi-host setup: `jax.distributed.initialize(**kwargs)` (coordinator_address,
    num_processes, process_id, ... or auto-detection on TPU/SLURM). Call before any JAX work."""
    jax.distributed.initialize(**kwargs)


def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process), axis "batch"."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("batch_mesh: no devices")
    return Mesh(np.asarray(devices), (AXIS,))


def pad_batch(tree, multiple: int):
    """Pad every leaf's leading axis to a multiple of `multiple` with copies of the last entry.

    Returns (padded tree, original size). All leaves must share the leading size.
    """
    leaves = [x for x in jax.tree.leaves(tree) if x is not None]
    sizes = {np.shape(x)[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"pad_batch: leading sizes differ across inputs: {sorted(sizes)}")
    (n,) = sizes
    if n == 0:
        raise ValueError("pad_batch: empty batch")
    pad = -n % multiple

    def one(x):
        if pad == 0:
            return x
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        tail = jax.numpy.repeat(x[-1:], pad, axis=0)
        return jax.numpy.concatenate([x, tail], axis=0)

    return jax.tree.map(one, tree), n


def _place(tree, sharding):
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


class ShardedSampler:
    """A one-image sample function, batched, compiled once, with the image (or sweep) axis
    sharded over `mesh`.

        run = ShardedSampler(sample)                       # all devices
        result = run(params, keys, y, op_params, hparams)  # padding handled and dropped

    `shard="batch"` splits images over devices (sweep values replicated); with `sweep=True`,
    `shard="sweep"` splits the sweep values instead (images replicated), for few images and many
    settings. `shared_op_params`: one op_params for the whole batch (replicated).
    """

    def __init__(
        self,
        sample,
        *,
        mesh: Mesh | None = None,
        sweep: bool = False,
        shard: str = "batch",
        shared_op_params: bool = False,
    ):
        if shard not in ("batch", "sweep") or (shard == "sweep" and not sweep):
            raise ValueError(f"shard must be 'batch' (or 'sweep' with sweep=True), got {shard!r}")
        self.mesh = batch_mesh() if mesh is None else mesh
        self.sweep, self.shard, self.shared_op_params = sweep, shard, shared_op_params
        self.fn = jax.jit(batched(sample, sweep=sweep, shared_op_params=shared_op_params))

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def __call__(self, params, keys, y=None, op_params=None, hparams=None, replay=None):
        d = self.num_devices
        split = NamedSharding(self.mesh, PartitionSpec(AXIS))
        same = NamedSharding(self.mesh, PartitionSpec())
        hparams = dict(hparams or {})
        per_image = {"keys": keys, "y": y, "replay": replay}
        if not self.shared_op_params:
            per_image["op_params"] = op_params
        if self.shard == "batch":
            per_image, n = pad_batch(per_image, d)
            valid = np.arange(jax.tree.leaves(per_image["keys"])[0].shape[0]) < n
            per_image = _place({**per_image, "valid": valid}, split)
            hparams = _place(hparams, same)
        else:
            hparams, n = pad_batch(hparams, d)
            hparams = _place(hparams, split)
            valid = np.ones(np.shape(keys)[0], bool)
            per_image = _place({**per_image, "valid": valid}, same)
        if self.shared_op_params:
            op_in = _place(op_params, same)
        else:
            op_in = per_image["op_params"]
        params = _place(params, same)
        out = self.fn(
            params,
            per_image["keys"],
            per_image["y"],
            op_in,
            hparams,
            per_image["replay"],
            per_image["valid"],
        )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            out = multihost_utils.process_allgather(out, tiled=True)
        cut_axis = 1 if (self.sweep and self.shard == "batch") else 0
        return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, n, axis=cut_axis), out)


__all__ = ["AXIS", "ShardedSampler", "batch_mesh", "initialize_distributed", "pad_batch"]
