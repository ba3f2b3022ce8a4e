"""The one batching path: pad, mark `valid`, place on the device mesh, run, unpad.

Every batch of images (the driver's, the sweep's, the demo's, `ShardedSampler`'s) goes through
`ShardedBatch`, in the manner of big_vision's `pad_shard_unpad`: the per-image inputs of THIS
process are padded to a fixed size (copies of the last image, marked `valid=False` so the
batch-coupled reductions of jaxdiff.samplers.common leave them out), laid out as one global
array whose leading axis is split over a 1-D mesh of every device of every process (axis
"batch", the images' vmap axis), run as one compiled program, and the padding is cut from this
process's rows of the result. Parameters and hyperparameters are replicated.

Because each image's draws depend only on its own key, results do not depend on the batch, the
device count or the process count beyond float32 rounding (XLA's summation order follows the
per-device batch shape; equal per-device shapes give equal bits).

Several processes (hosts, or local CPU processes in the tests): call `initialize_distributed()`
before any JAX work; each process then passes its own images (`process_share` picks them) and
gets its own images' results back. Every process must make the same sequence of calls.
"""

from __future__ import annotations

import json
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff import xla_options
from jaxdiff.errors import ConfigError, JaxdiffError
from jaxdiff.samplers import BATCH_AXIS, batched

# Compiled programs of this process by (caller's key, input shapes): a rerun, or another value
# of a traced hyperparameter (the demo run twice, a sweep checked against single runs), reuses
# the program instead of compiling it again.
_PROGRAMS: dict = {}

EXECUTION = threading.RLock()
"""Held while a program executes. XLA:CPU programs that execute at the same time change each
other's float results (two threads running the demo's programs gave different tables from run
to run; numpy work or a compilation beside an execution does not), so the batching path runs one
program at a time per process and a result depends on its inputs alone. Threads still overlap
one program's compilation with another's execution; programs in separate processes do not affect
each other (the demo's `workers` are processes)."""


class DistributedError(JaxdiffError, RuntimeError):
    """The processes of a multi-process run could not connect, or one of them is gone."""


def initialize_distributed(timeout: int | None = None, **kwargs) -> None:
    """`jax.distributed.initialize(**kwargs)` (coordinator_address, num_processes, process_id, or
    auto-detection on TPU pods / SLURM / Open MPI), with CPU collectives (gloo) so that local CPU
    processes can run one program together. Call before any other JAX work.

    timeout: seconds that connecting, a peer's silence (missed heartbeats) and the shutdown
    barrier may each last (None: JAX's defaults, 300 / 100 / 300 s). A failure to connect is a
    DistributedError naming this process."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if timeout is not None:
        kwargs.update(
            initialization_timeout=int(timeout),
            heartbeat_timeout_seconds=int(min(timeout, 100)),
            shutdown_timeout_seconds=int(timeout),
        )
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # XlaRuntimeError (DEADLINE_EXCEEDED, UNAVAILABLE, ...)
        who = kwargs.get("process_id")
        n = kwargs.get("num_processes")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"process {who if who is not None else '?'} of {n or '?'}: the processes did not "
            f"all connect to {kwargs.get('coordinator_address', 'the coordinator')}"
            f"{f' within {timeout} s' if timeout else ''} ({first}); check that every process "
            "was started with the same --coordinator and --num_processes and a distinct "
            "--process_id"
        ) from e


def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process), axis "batch"."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("batch_mesh: no devices")
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def process_share(n: int, index: int | None = None, count: int | None = None) -> range:
    """The items [start, stop) of `n` that process `index` of `count` handles: contiguous, sizes
    differing by at most one."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return range(n * index // count, n * (index + 1) // count)


def pad_batch(tree, size: int):
    """Pad every leaf's leading axis to `size` with copies of the last entry.

    Returns (padded tree, original size). All leaves must share the leading size.
    """
    leaves = [x for x in jax.tree.leaves(tree) if x is not None]
    sizes = {np.shape(x)[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"pad_batch: leading sizes differ across inputs: {sorted(sizes)}")
    (n,) = sizes
    if n > size:
        raise ValueError(f"pad_batch: {n} entries for a batch of {size}")

    def one(x):
        if n == size:
            return x
        xp = jax.numpy if isinstance(x, jax.Array) else np  # typed PRNG keys stay jax arrays
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        if n == 0:  # a process with no images left this step: its rows are all padding
            return xp.zeros((size, *x.shape[1:]), x.dtype)
        return xp.concatenate([x, xp.repeat(x[-1:], size - n, axis=0)])

    return jax.tree.map(one, tree), n


def allgather_json(obj) -> list:
    """`obj` (JSON-able) of every process, in process order; a barrier. One process: [obj].
    A peer gone (killed, crashed) is a DistributedError naming this process, not a hang."""
    if jax.process_count() == 1:
        return [obj]
    blob = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    try:
        sizes = multihost_utils.process_allgather(np.asarray([blob.size], np.int64)).reshape(-1)
        buf = np.zeros(max(int(sizes.max()), 1), np.uint8)
        buf[: blob.size] = blob
        rows = multihost_utils.process_allgather(buf)
    except Exception as e:  # XlaRuntimeError from the collectives: a peer is gone
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"process {jax.process_index()} of {jax.process_count()}: lost the other processes "
            f"while exchanging results ({first}); see the other processes' output for the "
            "one that failed"
        ) from e
    return [json.loads(bytes(rows[i, : sizes[i]])) for i in range(len(sizes))]


def agree(what: dict) -> None:
    """A barrier at which every process must hold equal `what` (JSON-able: the config, a
    fingerprint of the model, of the data listing): else every process stops with one
    ConfigError naming the processes and entries that differ. One process: nothing to do."""
    if jax.process_count() == 1:
        return
    problems = disagreements(allgather_json(what))
    if problems:
        raise ConfigError("the processes were started differently: " + "; ".join(problems))


def disagreements(parts: list[dict], limit: int = 4) -> list[str]:
    """What differs between process 0's entry `parts[0]` and every other's, as
    `process I: KEY.PATH = B, process 0: A` (at most `limit` of them)."""
    out = []
    for i, part in enumerate(parts[1:], 1):
        for path, a, b in _differences(parts[0], part):
            out.append(f"process {i}: {path} = {b!r}, process 0: {a!r}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _differences(a, b, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from _differences(a.get(k), b.get(k), f"{prefix}{'.' if prefix else ''}{k}")
    elif a != b:
        yield prefix or "value", a, b


def agreed_steps(todo: list, rows: int) -> tuple[list[list], int]:
    """This process's `todo` in chunks of `rows`, as many chunks as the busiest process needs
    (the others' last chunks are empty: every process makes the same calls). Returns the chunks
    and the total number of items over every process."""
    counts = allgather_json(len(todo))
    steps = max(-(-c // rows) for c in counts)
    return [todo[s * rows : (s + 1) * rows] for s in range(steps)], sum(counts)


class ShardedBatch:
    """`fn(replicated, split, valid) -> outputs`, a function of a whole batch (already vmapped),
    compiled once per input shapes and run with `split`'s leading axis over the mesh.

        run = ShardedBatch(fn, batch_size=8)
        out = run(replicated, split)   # this process's rows of every output, padding cut

    batch_size: the global batch (a multiple of the device count); each process pads its rows to
    batch_size / process_count, so every call runs the one compiled program. None: pad to a
    multiple of this process's device count instead (shapes then follow the input).
    out_axis: where the outputs carry the batch axis (1 for a sweep's (values, images, ...)).
    cache_key: a hashable that names what `fn` computes; calls of ShardedBatch objects with
    equal keys and shapes share one compiled program (None: no sharing).
    """

    def __init__(self, fn, *, batch_size=None, mesh=None, out_axis=0, cache_key=None):
        self.mesh = batch_mesh() if mesh is None else mesh
        n_dev = self.num_devices
        if batch_size is not None and (batch_size <= 0 or batch_size % n_dev):
            raise ValueError(
                f"batch_size {batch_size} is not a positive multiple of the device count {n_dev}"
            )
        self.batch_size = batch_size
        self.out_axis = out_axis
        self.cache_key = cache_key
        self.compile_seconds = 0.0
        self.wait_seconds = 0.0  # for EXECUTION, held by another thread's program
        spec = PartitionSpec(*([None] * out_axis), BATCH_AXIS)
        self._split = NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))
        self._same = NamedSharding(self.mesh, PartitionSpec())
        self._out_spec = spec
        self._fn = jax.jit(fn, out_shardings=NamedSharding(self.mesh, spec))
        self._compiled: dict = {}

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    def local_size(self, n: int) -> int:
        """The padded number of rows this process passes for `n` of its own."""
        if self.batch_size is not None:
            return self.batch_size // jax.process_count()
        local = max(1, self.num_devices // jax.process_count())
        return -(-n // local) * local

    def __call__(self, replicated, split):
        sizes = {np.shape(x)[0] for x in jax.tree.leaves(split) if x is not None}
        split, n = pad_batch(split, self.local_size(max(sizes, default=0)))
        valid = np.arange(self.local_size(n)) < n
        args = (self._place(replicated, self._same), *self._place((split, valid), self._split))
        program = self._program(args)
        t0 = time.perf_counter()
        with EXECUTION:
            self.wait_seconds += time.perf_counter() - t0
            out = jax.block_until_ready(program(*args))
        if jax.process_count() > 1:
            out = multihost_utils.global_array_to_host_local_array(out, self.mesh, self._out_spec)
        return jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, n, axis=self.out_axis), out)

    def replicate(self, tree):
        """`tree` on every device of the mesh: done once for what every call passes (the
        network's parameters), a call then finds it in place."""
        return self._place(tree, self._same)

    def _place(self, tree, sharding):
        def one(x):
            if isinstance(x, jax.Array) and x.sharding == sharding:
                return x  # already in place (replicate)
            if jax.process_count() == 1:
                return jax.device_put(x, sharding)
            if sharding is self._same:  # every process holds the whole value
                return jax.device_put(np.asarray(x), sharding)
            return jax.make_array_from_process_local_data(sharding, x)

        return jax.tree.map(one, tree)

    def _program(self, args):
        shapes = tuple((str(a.dtype), a.shape) for a in jax.tree.leaves(args))
        options = xla_options.compiler_options()
        key = (self.cache_key, shapes, self.out_axis, self.num_devices, jax.process_count())
        key += (tuple(sorted((options or {}).items())),)
        if key not in self._compiled:
            program = _PROGRAMS.get(key) if self.cache_key is not None else None
            if program is None:
                t0 = time.perf_counter()
                program = self._fn.lower(*args).compile(compiler_options=options)
                self.compile_seconds += time.perf_counter() - t0
                if self.cache_key is not None:
                    _PROGRAMS[key] = program
            self._compiled[key] = program
        return self._compiled[key]


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
        self.shard, self.shared_op_params = shard, shared_op_params
        run = batched(sample, sweep=sweep, shared_op_params=shared_op_params)

        def by_image(same, per_image, valid):
            op = same["op_params"] if shared_op_params else per_image["op_params"]
            keys, y, replay = per_image["keys"], per_image["y"], per_image["replay"]
            return run(same["params"], keys, y, op, same["hparams"], replay, valid)

        def by_value(same, hparams, valid):
            del valid  # padding of the values: their results are cut
            p = same["per_image"]
            op = same["op_params"] if shared_op_params else p["op_params"]
            return run(same["params"], p["keys"], p["y"], op, hparams, p["replay"])

        fn, out_axis = (by_image, 1 if sweep else 0) if shard == "batch" else (by_value, 0)
        self._batch = ShardedBatch(fn, mesh=mesh, out_axis=out_axis)

    @property
    def mesh(self) -> Mesh:
        return self._batch.mesh

    @property
    def num_devices(self) -> int:
        return self._batch.num_devices

    def __call__(self, params, keys, y=None, op_params=None, hparams=None, replay=None):
        hparams = dict(hparams or {})
        per_image = {"keys": keys, "y": y, "replay": replay, "op_params": op_params}
        same = {"params": params, "hparams": hparams}
        if self.shared_op_params:
            same["op_params"] = per_image.pop("op_params")
        if self.shard == "batch":
            return self._batch(same, per_image)
        same.pop("hparams")
        return self._batch({**same, "per_image": per_image}, hparams)


__all__ = [
    "ShardedBatch",
    "ShardedSampler",
    "agree",
    "agreed_steps",
    "disagreements",
    "allgather_json",
    "batch_mesh",
    "initialize_distributed",
    "pad_batch",
    "process_share",
]
