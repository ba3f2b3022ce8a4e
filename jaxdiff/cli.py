"""What every command-line entry point shares: `run(main)` parses the flags and calls `main`.

Each script (scripts/*.py, convert_weights) defines its absl flags at module level and ends with

    def console() -> None:  # the console entry point (setup.py)
        cli.run(main)

    if __name__ == "__main__":
        console()
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxdiff import compile_cache, config_lib

flags.DEFINE_string(
    "compilation_cache",
    None,
    "folder of the persistent XLA compilation cache, or 'off' (default: $"
    f"{compile_cache.ENV}, else the user's cache folder: jaxdiff/compile_cache.py)",
)


def run(main, argv=None) -> None:
    """absl's app.run(main), with `--config=` values resolved (see resolve_config_argv)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        argv = resolve_config_argv(argv)
    except ValueError as e:  # before absl parses anything: one line, the bad-input status 2
        print(f"{os.path.basename(argv[0])}: {e}", file=sys.stderr)
        sys.exit(2)
    _help_for(main.__module__)
    app.run(_with_compilation_cache(main), argv=argv)


def _with_compilation_cache(main):
    def wrapped(argv):
        compile_cache.enable(flags.FLAGS.compilation_cache)
        return main(argv)

    wrapped.__module__ = main.__module__
    return wrapped


def _help_for(module_name: str) -> None:
    """An installed command's __main__ is the console-script wrapper, not the script module, but
    absl's --help shows __main__'s docstring and the flags of the module named sys.argv[0]: give
    it the script's (nothing to do under `python -m scripts.X`)."""
    if module_name == "__main__" or module_name not in sys.modules:
        return
    main_module = sys.modules["__main__"]
    if not getattr(main_module, "__doc__", None):
        main_module.__doc__ = sys.modules[module_name].__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def resolve_config_argv(argv: list[str]) -> list[str]:
    """`--config=PATH[:ARG]` (or `--config PATH[:ARG]`) with a PATH that is no file here taken as
    a config file's name (`dps.py`, `dps`, `configs/dps.py`: jaxdiff.config_lib.config_path), so
    the installed commands run from any folder; a PATH that exists is left as it is. An unknown
    name is a ValueError listing the known configs."""
    out, i = list(argv[:1]), 1
    while i < len(argv):
        a = argv[i]
        if a == "--":  # absl: the rest is positional
            out += argv[i:]
            break
        flag, eq, value = a.partition("=")
        if flag in ("--config", "-config") and eq:
            out.append(f"{flag}={_config_value(value)}")
        elif a in ("--config", "-config") and i + 1 < len(argv):
            out += [a, _config_value(argv[i + 1])]
            i += 1
        else:
            out.append(a)
        i += 1
    return out


def _config_value(value: str) -> str:
    path, colon, arg = value.partition(":")
    if not path or os.path.exists(path):
        return value
    try:
        return f"{config_lib.config_path(path)}{colon}{arg}"
    except ValueError as e:
        raise ValueError(f"--config={value}: no file {path!r} in {os.getcwd()}, and {e}") from None


# --- several processes ---------------------------------------------------------------------------
def define_distributed_flags() -> None:
    """--distributed / --coordinator / --num_processes / --process_id, for the commands that run
    images on several processes (reproduce, sweep)."""
    flags.DEFINE_bool(
        "distributed",
        False,
        "run as one of several processes: jax.distributed.initialize() with the cluster "
        "auto-detected (Cloud TPU, SLURM, Open MPI)",
    )
    flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (implies --distributed)")
    flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")


def initialize_distributed() -> None:
    """jax.distributed.initialize from the flags of define_distributed_flags (no-op without)."""
    f = flags.FLAGS
    if not (f.distributed or f.coordinator):
        return
    from jaxdiff.sharding import initialize_distributed as init

    kwargs = {}
    if f.coordinator:
        if f.num_processes is None or f.process_id is None:
            raise app.UsageError("--coordinator needs --num_processes and --process_id")
        kwargs = {
            "coordinator_address": f.coordinator,
            "num_processes": f.num_processes,
            "process_id": f.process_id,
        }
    init(**kwargs)


def is_lead() -> bool:
    """The process that prints and writes the shared files (the only one, without several)."""
    import jax

    return jax.process_index() == 0


def no_positional_args(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


__all__ = [
    "define_distributed_flags",
    "initialize_distributed",
    "is_lead",
    "no_positional_args",
    "resolve_config_argv",
    "run",
]
