"""PyTorch state dict <-> Flax params, driven by the Flax model's own parameter tree.

The expected tree comes from `jax.eval_shape(model.init, ...)`; every Flax leaf gets its torch
key by a per-architecture rename of its path and its torch shape by the layout rule of its kind.
Matching a state dict against that list reports every missing key, unexpected key and shape
mismatch at once (KeyMismatchError, in torch names), so nothing is silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import CheckpointError, KeyMismatchError
from jaxdiff.models import abstract_params

LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


@dataclass(frozen=True)
class Entry:
    """One parameter: its torch key and shape, its Flax path and shape."""

    torch_key: str
    flax_path: tuple[str, ...]
    torch_shape: tuple[int, ...]
    flax_shape: tuple[int, ...]


def module_path(element: str, keep: Iterable[str] = ()) -> str:
    """A Flax module name -> its torch module path: "input_blocks_9_1" -> "input_blocks.9.1"."""
    if element in keep:
        return element
    return re.sub(r"_(\d+)", r".\1", element)


def torch_shape(leaf: str, flax_shape: tuple[int, ...], conv1d: bool) -> tuple[int, ...]:
    if leaf == "kernel" and len(flax_shape) == 4:  # Conv2d (kh, kw, I, O) <- (O, I, kh, kw)
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(flax_shape) == 2:  # Dense (I, O) <- Linear (O, I), Conv1d (O, I, 1)
        i, o = flax_shape
        return (o, i, 1) if conv1d else (o, i)
    return tuple(flax_shape)


def layout(
    params_tree,
    keep: Iterable[str] = (),
    conv1d_modules: Iterable[str] = (),
) -> list[Entry]:
    """Entries for a (possibly abstract) Flax params tree.

    keep: module names that contain "_<digit>" but are one torch name (diffusers "linear_1").
    conv1d_modules: module names whose Dense kernel is stored as a Conv1d (O, I, 1) (ADM qkv).
    """
    keep, conv1d_modules = frozenset(keep), frozenset(conv1d_modules)
    entries = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params_tree)[0]:
        names = tuple(k.key for k in path)
        *modules, name = names
        if name not in LEAF_NAMES:
            raise ValueError(f"no torch name for Flax parameter {'/'.join(names)}")
        key = ".".join([module_path(m, keep) for m in modules] + [LEAF_NAMES[name]])
        conv1d = bool(modules) and modules[-1] in conv1d_modules
        shape = tuple(leaf.shape)
        entries.append(Entry(key, names, torch_shape(name, shape, conv1d), shape))
    keys = [e.torch_key for e in entries]
    if len(set(keys)) != len(keys):  # a naming bug in a model, not a user error
        raise AssertionError("two Flax parameters map to one torch key")
    return entries


def model_layout(arch: str, model_config: dict, **kw) -> list[Entry]:
    return layout(abstract_params(arch, model_config), **kw)


def to_flax(array: np.ndarray, entry: Entry) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if len(entry.flax_shape) == 4:
        a = a.transpose(2, 3, 1, 0)
    elif entry.flax_path[-1] == "kernel":
        a = a.reshape(entry.torch_shape[:2]).T
    return np.ascontiguousarray(a)


def to_torch(array, entry: Entry) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if len(entry.flax_shape) == 4:
        a = a.transpose(3, 2, 0, 1)
    elif entry.flax_path[-1] == "kernel":
        a = a.T
    return np.ascontiguousarray(a.reshape(entry.torch_shape))


def state_dict_to_params(
    state_dict: dict[str, np.ndarray],
    entries: list[Entry],
    what: str = "state dict",
) -> dict:
    """Nested dict of float32 numpy arrays; KeyMismatchError lists every problem at once."""
    by_key = {e.torch_key: e for e in entries}
    missing = [k for k in by_key if k not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in by_key)
    shapes = [
        (k, tuple(np.shape(state_dict[k])), by_key[k].torch_shape)
        for k in by_key
        if k in state_dict and tuple(np.shape(state_dict[k])) != by_key[k].torch_shape
    ]
    if missing or unexpected or shapes:
        raise KeyMismatchError(what, missing, unexpected, shapes)
    params: dict = {}
    for key, entry in by_key.items():
        arr = np.asarray(state_dict[key])
        if not jnp.issubdtype(arr.dtype, jnp.floating):  # bfloat16 is not np.floating
            raise CheckpointError(f"{what}: {key} has dtype {arr.dtype}, not floating point")
        node = params
        for name in entry.flax_path[:-1]:
            node = node.setdefault(name, {})
        node[entry.flax_path[-1]] = to_flax(arr, entry)
    return params


def params_to_state_dict(params, entries: list[Entry]) -> dict[str, np.ndarray]:
    """The inverse of `state_dict_to_params` (torch layouts, float32 numpy)."""
    out = {}
    for entry in entries:
        node = params
        for name in entry.flax_path:
            node = node[name]
        if tuple(node.shape) != entry.flax_shape:
            raise ValueError(
                f"param {'/'.join(entry.flax_path)}: shape {tuple(node.shape)}, "
                f"expected {entry.flax_shape}"
            )
        out[entry.torch_key] = to_torch(node, entry)
    return out


def torch_shapes(entries: list[Entry]) -> dict[str, tuple[int, ...]]:
    """{torch key: torch shape}: what a checkpoint for this config must hold."""
    return {e.torch_key: e.torch_shape for e in entries}
