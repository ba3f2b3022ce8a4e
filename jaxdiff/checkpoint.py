"""Save and load converted/trained parameters: an orbax tree under ``DIR/params`` plus the
``DIR/jaxdiff.json`` sidecar that says how to rebuild the model and which diffusion it was
trained with.

Writes go to a temporary sibling folder that is renamed into place, so an interrupted save never
leaves a half-written ``DIR`` that a later load would trust.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data import json_default
from jaxdiff.errors import CheckpointError

FORMAT_VERSION = 1
META_FILE = "jaxdiff.json"
PARAMS_DIR = "params"
REQUIRED_META = ("architecture", "model_config")


MAX_ABS_WEIGHT = 1e5  # no trained diffusion UNet comes near this; corrupted bytes often do


def count_parameters(params) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def _named_leaves(params) -> list[tuple[str, np.ndarray]]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    named = [(jax.tree_util.keystr(path), np.asarray(v)) for path, v in leaves]
    return sorted(named, key=lambda kv: kv[0])


def params_digest(params) -> str:
    """SHA-256 over every leaf's name, dtype, shape and bytes (in name order): what
    `jaxdiff.json` records so a load can tell the parameters are the ones that were written.
    Costs one pass over the bytes (about 1-2 s per GB on one core)."""
    h = hashlib.sha256()
    for name, v in _named_leaves(params):
        v = np.ascontiguousarray(v)
        h.update(f"{name}|{v.dtype.str}|{v.shape}\n".encode())
        h.update(memoryview(v).cast("B"))
    return h.hexdigest()


def check_weights(params, max_abs: float | None = MAX_ABS_WEIGHT, what: str = "params") -> None:
    """Refuse non-finite values (naming each tensor and the count) and, unless `max_abs` is
    None, magnitudes above it: both are what a corrupted file decodes to, not what training
    produces."""
    bad, huge = [], []
    for name, v in _named_leaves(params):
        if not np.issubdtype(v.dtype, np.floating) or v.size == 0:
            continue
        finite = np.isfinite(v)
        if not finite.all():
            bad.append(f"{name} ({int(v.size - finite.sum())} of {v.size})")
        elif max_abs is not None:
            m = float(np.max(np.abs(v)))
            if m > max_abs:
                huge.append(f"{name} (max |w| = {m:.3g})")
    if bad:
        raise CheckpointError(
            f"{what}: non-finite weights (NaN/Inf) in {len(bad)} tensor(s): "
            + "; ".join(bad[:10])
            + (" ..." if len(bad) > 10 else "")
            + ": the file is corrupt"
        )
    if huge:
        raise CheckpointError(
            f"{what}: weights above {max_abs:g} in magnitude in {len(huge)} tensor(s): "
            + "; ".join(huge[:10])
            + (" ..." if len(huge) > 10 else "")
            + ": the file is likely corrupt (converter: --allow_large_weights if they are real)"
        )


def _to_numpy_f32(params):
    """Host numpy copies; floating leaves as float32 (the contract for stored parameters)."""

    def conv(x):
        x = np.asarray(x)
        return x.astype(np.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree_util.tree_map(conv, params)


def save_pretrained(
    directory, params, meta: dict, force: bool = False, max_abs: float | None = MAX_ABS_WEIGHT
) -> Path:
    """Write ``params`` (a pytree of arrays) and ``meta`` (the sidecar dict) to ``directory``.

    The weights are checked first (`check_weights`: finite, |w| <= max_abs unless None).
    ``format_version``, ``num_parameters`` and ``params_sha256`` are filled in here. An
    existing ``directory`` raises FileExistsError unless ``force``; then it is replaced
    (atomically swapped where the OS allows it, so there is never no checkpoint at that path).
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    check_replaceable(directory, force)
    if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"meta format_version {meta['format_version']!r}: this writes 1")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing} (needed to rebuild the model)")
    params = _to_numpy_f32(params)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params is empty: nothing to save")
    check_weights(params, max_abs, what=str(meta.get("source", {}).get("file", directory)))
    meta = {
        "format_version": FORMAT_VERSION,
        **meta,
        "num_parameters": count_parameters(params),
        "params_sha256": params_digest(params),
    }
    meta_text = json.dumps(meta, indent=2, default=json_default) + "\n"

    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_DIR, params)
            ckptr.wait_until_finished()
        # orbax's commit marker names the temporary folder by its absolute path: wrong after the
        # move below, and a machine's path inside a folder that may be shipped; nothing reads it
        (tmp / PARAMS_DIR / "commit_success.txt").unlink(missing_ok=True)
        (tmp / META_FILE).write_text(meta_text)
        _move_into_place(tmp, directory, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def remove_stale_temporaries(directory) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` folders that an earlier save of `directory` left behind when it
    was killed (SIGKILL leaves no chance to clean up) and whose process is gone."""
    directory = Path(directory).absolute()
    removed = []
    if not directory.parent.is_dir():
        return removed
    prefix = f".{directory.name}.tmp-"
    for tmp in directory.parent.glob(f"{prefix}*"):
        pid = tmp.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or not tmp.is_dir() or _alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_replaceable(
    directory: Path, force: bool, markers: tuple[str, ...] = (META_FILE,)
) -> None:
    """``force`` replaces a jaxdiff checkpoint (a folder holding one of ``markers``: the
    sidecar, or a converted pipeline's pipeline.json) or an empty folder, never anything else:
    a mistyped ``--out . --force`` must not delete a working tree or a run's results."""
    if not directory.exists():
        return
    if not force:
        raise FileExistsError(
            f"{directory} already exists; pass force=True (--force) to replace it"
        )
    if not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a folder; refusing to replace it")
    if any(directory.iterdir()) and not any((directory / m).is_file() for m in markers):
        raise FileExistsError(
            f"{directory} is a non-empty folder without {' or '.join(markers)} (not a jaxdiff "
            "checkpoint); refusing to replace it, even with force"
        )


def _move_into_place(tmp: Path, directory: Path, force: bool) -> None:
    if not directory.exists():
        os.rename(tmp, directory)
        return
    check_replaceable(directory, force)  # it may have appeared while we were writing
    if _exchange(tmp, directory):  # tmp now holds the old checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(directory, old)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def read_meta(directory) -> dict:
    """The validated ``jaxdiff.json`` of a checkpoint folder (cheap: no arrays read)."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such checkpoint folder")
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: a file, not a jaxdiff checkpoint folder (convert PyTorch weights "
            "with `python -m convert_weights SRC --out DIR`)"
        )
    path = directory / META_FILE
    if not path.is_file():
        have = sorted(p.name for p in directory.iterdir())[:10]
        raise CheckpointError(
            f"{directory}: not a jaxdiff checkpoint: no {META_FILE} (folder holds {have})"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown format_version {version!r} (this jaxdiff reads {FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {missing}")
    return meta


@contextlib.contextmanager
def _failure_output_dropped(settle_s: float = 0.5):
    """Hold what is printed on stderr (file descriptor 2) during a restore: replayed if it
    succeeds, dropped if it fails. A failed orbax restore leaves tensorstore callbacks that post
    to orbax's closed asyncio loop, each printing an `Event loop is closed` traceback from a
    worker thread (some straight from C, past sys.excepthook) for a while after the exception;
    the error raised says what went wrong, in one line. `settle_s`: how long those get."""
    sys.stderr.flush()
    real = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            time.sleep(settle_s)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(real, 2)
            os.close(real)
            if not failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
                sys.stderr.flush()


def load_checkpoint(directory, verify: bool = True) -> tuple[Any, dict]:
    """``(params, meta)``: params a nested dict of host numpy arrays (floating ones float32).

    With ``verify`` the parameters must hash to the sidecar's ``params_sha256`` (a damaged
    params/ folder fails here, not as silently wrong samples); a sidecar without one is refused
    (`seal_checkpoint` records it for a folder the user trusts)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_meta(directory)
    params_dir = directory / PARAMS_DIR
    if not params_dir.is_dir():
        raise CheckpointError(f"{directory}: no {PARAMS_DIR}/ folder beside {META_FILE}")
    try:
        with _failure_output_dropped(), ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir)
    except Exception as e:  # orbax/tensorstore raise many types for a damaged folder
        raise CheckpointError(f"{params_dir}: cannot restore parameters ({e})") from e
    params = _to_numpy_f32(params)
    n = count_parameters(params)
    if "num_parameters" in meta and meta["num_parameters"] != n:
        raise CheckpointError(
            f"{directory}: {META_FILE} says {meta['num_parameters']} parameters, "
            f"{PARAMS_DIR}/ holds {n}"
        )
    if verify:
        verify_params(directory, params, meta)
    return params, meta


def verify_params(directory, params, meta: dict) -> None:
    """Check `params` against everything the sidecar records about them; a sidecar that records
    no digest is refused (what such a folder holds cannot be told from what was written)."""
    want = meta.get("params_sha256")
    if want is None:
        raise CheckpointError(
            f"{directory}: {META_FILE} carries no params_sha256, so its parameters cannot be "
            "verified; convert the weights again, or if you trust them, record their digest "
            f"with `python -m jaxdiff.checkpoint {directory}`"
        )
    if not isinstance(want, str) or not re.fullmatch(r"[0-9a-f]{64}", want):
        raise CheckpointError(f"{directory}: {META_FILE}: params_sha256 {want!r} is not a SHA-256")
    if params_digest(params) != want:
        raise CheckpointError(
            f"{directory}: the parameters in {PARAMS_DIR}/ are not the ones that were "
            f"written (SHA-256 differs from {META_FILE}'s params_sha256): the folder is "
            "corrupt; convert or export it again"
        )


def seal_checkpoint(directory, max_abs: float | None = MAX_ABS_WEIGHT) -> str:
    """Record the digest of a folder whose sidecar has none (written before digests existed),
    after the checks a save makes (finite, |w| <= max_abs); returns the digest."""
    directory = Path(directory).absolute()
    params, meta = load_checkpoint(directory, verify=False)
    if meta.get("params_sha256") is not None:
        verify_params(directory, params, meta)
        return meta["params_sha256"]
    check_weights(params, max_abs, what=str(directory))
    meta["params_sha256"] = params_digest(params)
    from jaxdiff.data import atomic_write_text

    atomic_write_text(
        directory / META_FILE, json.dumps(meta, indent=2, default=json_default) + "\n"
    )
    return meta["params_sha256"]


def main(argv=None) -> int:
    """`python -m jaxdiff.checkpoint DIR [--allow_large_weights]`: seal a trusted folder."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m jaxdiff.checkpoint", description=main.__doc__)
    ap.add_argument("directory")
    ap.add_argument("--allow_large_weights", action="store_true")
    args = ap.parse_args(argv)
    try:
        digest = seal_checkpoint(
            args.directory, None if args.allow_large_weights else MAX_ABS_WEIGHT
        )
    except (CheckpointError, FileNotFoundError) as e:
        print(f"jaxdiff.checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.directory}: params_sha256 {digest}")
    return 0


def is_unconverted_source(path) -> bool:
    """A source `convert_weights` reads rather than a jaxdiff folder: a guided-diffusion
    checkpoint file (.pt/.pth/.bin) or a folder with a diffusers config.json and no sidecar."""
    path = Path(path)
    if path.is_dir():
        return not (path / META_FILE).is_file() and (path / "config.json").is_file()
    return path.is_file() and path.suffix.lower() in (".pt", ".pth", ".bin")


def load_params(path, preset: str | None = None, config=None) -> tuple[Any, dict]:
    """``(params, meta)`` of a converted folder (`load_checkpoint`), or of a checkpoint not
    converted yet, converted in memory with the converter's checks (jaxdiff.convert.core
    .read_source); one log line then says how to convert it once, which loads faster."""
    if not is_unconverted_source(path):
        if preset is not None or config is not None:
            raise ValueError(f"{path}: preset/config apply only to an unconverted ADM checkpoint")
        return load_checkpoint(path)
    import logging
    import time

    from jaxdiff.convert.core import read_source

    t0 = time.perf_counter()
    params, meta = read_source(path, preset=preset, config=config, progress=False, kind="diffusion")
    params = _to_numpy_f32(params)
    meta = {"format_version": FORMAT_VERSION, **meta, "num_parameters": count_parameters(params)}
    flag = f" --preset {preset}" if preset else f" --config {config}" if config else ""
    logging.getLogger("jaxdiff.checkpoint").warning(
        "%s: converted in memory (%.1f s); convert it once to load it faster: "
        "python -m convert_weights %s%s --out DIR",
        path,
        time.perf_counter() - t0,
        path,
        flag,
    )
    return params, meta


if __name__ == "__main__":
    raise SystemExit(main())
