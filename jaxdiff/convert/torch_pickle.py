"""Read PyTorch ``.pt`` / ``.pth`` / ``.bin`` checkpoints into numpy without importing torch.

A pickle can run any code it names, so the unpickler here resolves only the handful of globals a
state dict needs (``OrderedDict``, the tensor/parameter rebuild functions, the typed storage
classes), each replaced by a local stand-in; anything else raises ``UnsafePickleError`` before it
runs. Both on-disk layouts torch has used are read:

* zip (torch >= 1.6): ``<prefix>/data.pkl`` + one raw record ``<prefix>/data/<key>`` per storage;
* legacy (``_use_new_zipfile_serialization=False``): magic number, protocol version, sys_info and
  the object as consecutive pickles, then the list of storage keys, then per storage an 8-byte
  little-endian element count followed by the raw bytes.

Storages are read once each, after the pickle, and tensors are numpy views/copies of them.
"""

from __future__ import annotations

import collections
import difflib
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from jaxdiff.errors import CheckpointError, UnsafePickleError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
PROGRESS_MIN_BYTES = 64 << 20  # show a progress bar above this many bytes of storage

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),  # raw bytes: numel counts bytes
}


@dataclass(frozen=True)
class StorageType:
    """Stand-in for ``torch.<X>Storage``: only its element dtype matters."""

    name: str
    dtype: np.dtype

    def __setstate__(self, state):
        raise UnsafePickleError(f"refused a BUILD on the allow-listed 'torch.{self.name}'")


class _AllowedCallable:
    """An allow-listed global as the pickle sees it: callable, but a BUILD opcode on it (which
    would update the shared function's attributes for every later load) is refused."""

    def __init__(self, qualname: str, fn):
        self._qualname, self._fn = qualname, fn

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def __setstate__(self, state):
        raise UnsafePickleError(f"refused a BUILD on the allow-listed '{self._qualname}'")


@dataclass
class Storage:
    """One storage record: resolved to ``data`` (1-D numpy) after the pickle is read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None
    view: tuple[Storage, int, int] | None = None  # legacy storage views: (root, offset, numel)

    def array(self) -> np.ndarray:
        if self.view is not None:
            root, offset, numel = self.view
            return root.array()[offset : offset + numel]
        if self.data is None:
            raise CheckpointError(f"storage {self.key!r} was never read")
        return self.data


@dataclass
class LazyTensor:
    """A tensor waiting for its storage: torch's (offset, size, stride) view of it."""

    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        size, stride = tuple(self.size), tuple(self.stride)
        if len(size) != len(stride):
            raise CheckpointError(f"tensor size {size} and stride {stride} differ in rank")
        if any(n == 0 for n in size):
            return np.zeros(size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(size, stride))
        if self.offset < 0 or min(stride, default=0) < 0 or last >= flat.size:
            raise CheckpointError(
                f"tensor view (offset {self.offset}, size {size}, stride {stride}) runs past "
                f"its storage {self.storage.key!r} of {flat.size} elements"
            )
        n = int(np.prod(size, dtype=np.int64))
        if n > flat.size - self.offset:  # a state dict's tensor owns its elements
            raise CheckpointError(
                f"tensor view of {n} elements (size {size}, stride {stride}) over a storage "
                f"{self.storage.key!r} of {flat.size} elements: overlapping strides are not "
                "how a state dict stores its tensors (refused, it could expand without bound)"
            )
        if stride == _contiguous_strides(size):
            return flat[self.offset : self.offset + n].reshape(size)
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], size, tuple(s * item for s in stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(size):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # _rebuild_tensor_v2 adds (requires_grad, backward_hooks[, metadata]): irrelevant to values.
    if not isinstance(storage, Storage):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED: dict[tuple[str, str], object] = {
    **{
        (module, name): _AllowedCallable(f"{module}.{name}", fn)
        for module, name, fn in (
            ("collections", "OrderedDict", collections.OrderedDict),
            ("torch._utils", "_rebuild_tensor", _rebuild_tensor),
            ("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor),
            ("torch._utils", "_rebuild_parameter", _rebuild_parameter),
            ("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter),
        )
    },
    **{("torch", name): StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()},
}


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the state-dict allow-list; storages come from ``persistent_load``."""

    def __init__(self, file, source: str, storages: dict[str, Storage], legacy: bool):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._storages = storages
        self._legacy = legacy

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused to load global '{module}.{name}'; only state-dict "
                "tensors are allowed (nothing was executed)"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _text(pid[0]) != "storage":
            what = _text(pid[0]) if isinstance(pid, tuple) and pid else repr(pid)[:60]
            raise UnsafePickleError(f"{self._source}: refused persistent id {what!r}")
        n = 6 if self._legacy else 5
        if len(pid) != n or not isinstance(pid[1], StorageType):
            raise CheckpointError(f"{self._source}: malformed storage record {pid!r:.200}")
        storage_type, key, numel = pid[1], _text(pid[2]), int(pid[4])
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = Storage(key, storage_type.dtype, numel)
        if self._legacy and pid[5] is not None:  # a view into the root storage
            view_key, offset, view_numel = pid[5]
            view_key = _text(view_key)
            if view_key not in self._storages:
                view = Storage(view_key, root.dtype, int(view_numel))
                view.view = (root, int(offset), int(view_numel))
                self._storages[view_key] = view
            return self._storages[view_key]
        return root


def _text(x) -> str:
    return x.decode("ascii") if isinstance(x, bytes) else str(x)


def checkpoint_format(path: str | os.PathLike) -> str:
    """'pt-zip' or 'pt-legacy' (by content, not by name); CheckpointError for anything else."""
    path = os.fspath(path)
    head = _head(path)
    if zipfile.is_zipfile(path):
        return "pt-zip"
    if head.startswith(b"PK\x03\x04"):
        raise CheckpointError(
            f"{path}: starts like a zip checkpoint but has no zip directory: the file is "
            "truncated or corrupt"
        )
    if head.startswith(b"\x80") and len(head) >= 2:
        return "pt-legacy"
    raise CheckpointError(
        f"{path}: not a PyTorch checkpoint (neither a torch zip archive nor a legacy pickle; "
        f"first bytes {head[:8]!r})"
    )


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from None
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    return head


def load(path: str | os.PathLike, *, progress: bool = True) -> object:
    """The unpickled object (nested dicts/lists) with every tensor as a numpy array."""
    path = os.fspath(path)
    fmt = checkpoint_format(path)
    storages: dict[str, Storage] = {}
    try:
        if fmt == "pt-zip":
            obj = _load_zip(path, storages, progress)
        else:
            obj = _load_legacy(path, storages, progress)
        return _materialize(obj)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error) as e:
        raise CheckpointError(f"{path}: corrupt or truncated {fmt} checkpoint ({e})") from e
    except (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        UnicodeError,
        OverflowError,
        MemoryError,
    ) as e:
        raise CheckpointError(f"{path}: corrupt {fmt} checkpoint ({type(e).__name__}: {e})") from e


def _load_zip(path: str, storages: dict[str, Storage], progress: bool) -> object:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.split("/")[1] == "data.pkl"]
        if len(pkls) != 1:
            raise CheckpointError(
                f"{path}: a zip archive but not a torch checkpoint: expected one "
                f"'<prefix>/data.pkl', found {pkls or 'none'}"
            )
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
            raise CheckpointError(
                f"{path}: a TorchScript archive (torch.jit.save), not a state dict; save "
                "model.state_dict() with torch.save instead"
            )
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        with zf.open(pkls[0]) as f:
            obj = SafeUnpickler(io.BytesIO(f.read()), path, storages, legacy=False).load()
        records = set(names)
        roots = [s for s in storages.values() if s.view is None]
        with progress_bar(path, sum(s.numel * s.dtype.itemsize for s in roots), progress) as tick:
            for s in roots:
                name = f"{prefix}data/{s.key}"
                nbytes = s.numel * s.dtype.itemsize
                if name not in records and nbytes == 0:
                    s.data = np.empty(0, s.dtype)
                    continue
                if name not in records:
                    raise CheckpointError(f"{path}: missing storage record {name!r}")
                if zf.getinfo(name).file_size < nbytes:
                    raise CheckpointError(
                        f"{path}: storage record {name!r} holds {zf.getinfo(name).file_size} "
                        f"bytes, the tensors need {nbytes}"
                    )
                with zf.open(name) as rec:
                    s.data = _read_exact(rec, s.dtype, s.numel, f"{path}: storage {name!r}")
                tick(nbytes)
    _fix_byteorder(storages, byteorder, path)
    return obj


def _load_legacy(path: str, storages: dict[str, Storage], progress: bool) -> object:
    with open(path, "rb") as f:
        magic = SafeUnpickler(f, path, storages, legacy=True).load()
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: a pickle, but not a torch checkpoint (no magic number)")
        version = SafeUnpickler(f, path, storages, legacy=True).load()
        if version != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {version!r}")
        SafeUnpickler(f, path, storages, legacy=True).load()  # sys_info: unused
        obj = SafeUnpickler(f, path, storages, legacy=True).load()
        keys = [_text(k) for k in SafeUnpickler(f, path, storages, legacy=True).load()]
        roots = [storages[k] for k in keys if k in storages]
        if len(roots) != len(keys):
            raise CheckpointError(f"{path}: storage list names unknown storages")
        missing = sorted(k for k, s in storages.items() if s.view is None and k not in keys)
        if missing:
            raise CheckpointError(f"{path}: missing storage record(s) {missing}")
        total = sum(s.numel * s.dtype.itemsize for s in roots)
        with progress_bar(path, total, progress) as tick:
            for s in roots:
                what = f"{path}: storage {s.key!r}"
                (count,) = struct.unpack("<q", _read_bytes(f, 8, what))
                if count != s.numel:
                    raise CheckpointError(f"{what} has {count} elements, expected {s.numel}")
                s.data = _read_exact(f, s.dtype, s.numel, what)
                tick(s.numel * s.dtype.itemsize)
    return obj  # legacy storages are always written little-endian, whatever the host


def _read_bytes(f, n: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise CheckpointError(f"{what}: file truncated ({len(b)} of {n} bytes)")
    return b


def _read_exact(f, dtype: np.dtype, numel: int, what: str) -> np.ndarray:
    """Read ``numel`` elements into a fresh writable array (one copy, no intermediate bytes)."""
    out = np.empty(numel, dtype)
    buf = memoryview(out.view(np.uint8))
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            raise CheckpointError(f"{what}: file truncated ({got} of {len(buf)} bytes)")
        got += n
    return out


def _fix_byteorder(storages: dict[str, Storage], byteorder: str, path: str) -> None:
    if byteorder == "little":
        return
    if byteorder != "big":
        raise CheckpointError(f"{path}: unknown byteorder {byteorder!r}")
    for s in storages.values():
        if s.data is not None:
            s.data = s.data.byteswap()


def _materialize(obj):
    if isinstance(obj, LazyTensor):
        return obj.materialize()
    if isinstance(obj, Storage):
        return obj.array()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


class progress_bar:
    """tqdm byte counter for large files; a no-op below PROGRESS_MIN_BYTES."""

    def __init__(self, path: str, total: int, enabled: bool, verb: str = "reading"):
        self._bar = None
        if enabled and total >= PROGRESS_MIN_BYTES:
            from tqdm.auto import tqdm

            desc = f"{verb} {os.path.basename(path)}"
            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc)

    def __enter__(self) -> Callable[[int], None]:
        return self._bar.update if self._bar is not None else (lambda n: None)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


# -- picking the flat tensor dict -----------------------------------------------------------------


def _is_tensor_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def _tensor_dicts(obj, path: str = "", depth: int = 0) -> Iterator[tuple[str, dict]]:
    if _is_tensor_dict(obj):
        yield path, obj
    elif isinstance(obj, dict) and depth < 3:
        for k, v in obj.items():
            yield from _tensor_dicts(v, f"{path}/{k}" if path else str(k), depth + 1)


def select_state_dict(obj, source: str = "checkpoint", key: str | None = None):
    """The flat ``{name: array}`` dict inside ``obj``.

    ``obj`` itself if it is one; else the one nested tensor dict (e.g. under ``state_dict``);
    ``key`` ('ema', 'state_dict/model', ...) picks one when there are several. A common
    ``module.`` prefix (DataParallel) is stripped.
    """
    if key is not None:
        node = obj
        for part in key.split("/"):
            if not isinstance(node, dict) or part not in node:
                if not isinstance(node, dict):
                    raise CheckpointError(f"{source}: no entry {key!r} (a {type(node).__name__})")
                names = [str(k) for k in node]
                close = difflib.get_close_matches(part, names, n=5, cutoff=0.3)
                raise CheckpointError(
                    f"{source}: no entry {key!r} among its {len(names)} entries; closest: "
                    f"{close or names[:5]}"
                )
            node = node[part]
        found = [(key, node)] if _is_tensor_dict(node) else []
        if not found:
            raise CheckpointError(f"{source}: entry {key!r} is not a dict of tensors")
    else:
        found = list(_tensor_dicts(obj))
    if len(found) != 1:
        if not found:
            desc = (
                f"a {type(obj).__name__} with entries {list(obj)[:20]}"
                if isinstance(obj, dict)
                else f"a {type(obj).__name__}"
            )
            raise CheckpointError(f"{source}: no dict of tensors found; the file holds {desc}")
        listing = ", ".join(f"{p or '<top level>'!r} ({len(d)} tensors)" for p, d in found)
        raise CheckpointError(
            f"{source}: several tensor dicts: {listing}; choose one with key=... "
            "(--key in the converter)"
        )
    sd = dict(found[0][1])
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict(path: str | os.PathLike, key: str | None = None, *, progress: bool = True):
    """``{name: np.ndarray}`` from a torch checkpoint file; see ``select_state_dict``."""
    return select_state_dict(load(path, progress=progress), os.fspath(path), key)
