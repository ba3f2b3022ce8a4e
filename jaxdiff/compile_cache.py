"""The persistent compilation cache of the command-line tools: a second run of the same command
reuses the compiled programs instead of compiling them again (6-15 s per program on a CPU, far more
on accelerators for the big presets).

On by default for the commands (`jaxdiff.cli.run` calls `enable()` before any compile) in the user's
cache folder: `xla/` under jaxdiff's cache root ($JAXDIFF_CACHE_DIR, else $XDG_CACHE_HOME/jaxdiff,
else ~/.cache/jaxdiff; the FID reference features live there too). The environment variable
JAXDIFF_COMPILATION_CACHE moves it (a folder) or turns it off (`off`, `0`, `false`, `no`); the
commands' `--compilation_cache` flag does the same. Library users who want it call `enable()`
themselves: importing jaxdiff changes no JAX setting.
"""

from __future__ import annotations

import os
import pathlib

import jax

ENV = "JAXDIFF_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "none", "")


def default_dir() -> pathlib.Path:
    from jaxdiff.metrics.distribution import default_cache_dir

    return default_cache_dir() / "xla"


def resolve(setting: str | None = None) -> pathlib.Path | None:
    """The cache folder for `setting` (a flag's value; None: the environment, else the
    default), or None when turned off."""
    if setting is None:
        setting = os.environ.get(ENV)
    if setting is None:
        return default_dir()
    if setting.strip().lower() in OFF:
        return None
    return pathlib.Path(setting).expanduser()


def enable(setting: str | None = None) -> pathlib.Path | None:
    """Point JAX's persistent compilation cache at `resolve(setting)`; returns the folder (None:
    off). A folder that cannot be created leaves the cache off with a warning: a cache is never a
    reason for a run to fail."""
    path = resolve(setting)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        import warnings

        warnings.warn(f"compilation cache off: cannot create {path} ({err})", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program that took a noticeable time to compile, however small its binary.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
