"""What every command-line entry point shares: `run(main)` parses the flags and calls `main`;
bad input, found while the flags and config files are parsed or later, ends as one line
`PROG: error: ...` on stderr with exit status 2 (`--debug`: the traceback).

Each script (scripts/*.py, convert_weights) defines its absl flags at module level and ends with

    def console() -> None:  # the console entry point (setup.py)
        cli.run(main)

    if __name__ == "__main__":
        console()
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from absl import app, flags
from absl import logging as absl_logging

from jaxdiff import compile_cache, config_lib, xla_options
from jaxdiff.errors import JaxdiffError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 128 + 2  # the shell's status for a process ended by SIGINT
# What counts as bad input (a config, a file, a flag, a folder): one line, status 2. Anything
# else is a defect and keeps its traceback. OSError covers a missing or unreadable file and a
# full disk; KeyError a missing key of a file or registry.
BAD_INPUT = (JaxdiffError, ValueError, KeyError, OSError, app.UsageError, flags.Error)

flags.DEFINE_bool("debug", False, "show the traceback of an error (default: one line)")
flags.DEFINE_string(
    "compilation_cache",
    None,
    "folder of the persistent XLA compilation cache, or 'off' (default: $"
    f"{compile_cache.ENV}, else the user's cache folder: jaxdiff/compile_cache.py)",
)


def run(main, argv=None, *, info_logs: bool = False, default_config: str | None = None) -> None:
    """absl's app.run(main), with `--config=` values resolved (see resolve_config_argv), and
    bad input, whether found while the flags (and config files) are parsed or in `main`, ended
    as one line `PROG: error: ...` on stderr and exit status 2 (`--debug`: the traceback).
    INFO logs are off unless --verbosity asks for them (`info_logs`: the command's own INFO
    lines stay, train's progress; the libraries' (orbax, jax) stay off).

    `default_config`: the `--config=` a command runs without one. It is given here, not as the
    flag's default: ml_collections loads a default config file, and applies the command line's
    `--config.KEY=` overrides to it, while the flag is defined, at import, before any of this
    can turn a typo into one line."""
    console = argv is None
    if console:
        _quiet_closed_event_loops()
    argv = list(sys.argv if argv is None else argv)
    prog = command_name(argv[0])
    debug = any(a in ("--debug", "-debug", "--debug=true", "--debug=True") for a in argv)
    if default_config and not any(a.split("=", 1)[0] in ("--config", "-config") for a in argv):
        argv.insert(1, f"--config={default_config}")
    try:
        argv = resolve_config_argv(argv)
    except ValueError as e:  # before absl parses anything: one line, the bad-input status 2
        fail(prog, e, console)
    _help_for(main.__module__)

    def parse(args):
        try:
            out = flags.FLAGS(args)
        except (*BAD_INPUT, AttributeError) as e:  # AttributeError: a config-key typo
            if debug:
                raise
            fail(
                prog, _name_flag(one_line(e), args) if isinstance(e, AttributeError) else e, console
            )
        if not flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_logging.INFO if info_logs else absl_logging.WARNING)
            absl_logging.get_absl_logger().addFilter(_quiet_libraries)  # absl.logging calls
            absl_logging.get_absl_handler().python_handler.addFilter(_quiet_libraries)
        return out

    def guarded(args):
        try:
            xla_options.env_setting()  # a bad value: one line before anything is written
            compile_cache.enable(flags.FLAGS.compilation_cache)
            xla_options.straight_line_threefry()  # less XLA:CPU compile time, the same bits
            return main(args)
        except BAD_INPUT as e:
            if flags.FLAGS.debug:
                raise
            fail(prog, e, console)
        except KeyboardInterrupt:
            if flags.FLAGS.debug:
                raise
            interrupted(prog)

    app.run(guarded, argv=argv, flags_parser=parse)


def _quiet_closed_event_loops() -> None:
    """After a failed orbax restore, tensorstore's callbacks still post to orbax's asyncio loop,
    which is closed by then; each prints `RuntimeError: Event loop is closed` with its traceback
    through sys.excepthook (and, from a thread, threading.excepthook), burying the command's one
    error line. Those, and only those, are dropped."""

    def closed_loop(exc) -> bool:
        return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

    hook, thread_hook = sys.excepthook, threading.excepthook

    def excepthook(kind, value, tb):
        if not closed_loop(value):
            hook(kind, value, tb)

    def thread_excepthook(args):
        if not closed_loop(args.exc_value):
            thread_hook(args)

    sys.excepthook, threading.excepthook = excepthook, thread_excepthook


def _quiet_libraries(record) -> bool:
    """Drop the INFO logs of the libraries (orbax logs every save and restore at INFO)."""
    libs = ("orbax", "etils", "jax")
    return record.levelno >= logging.WARNING or not (
        record.name.split(".")[0] in libs
        or any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in libs)
    )


def _name_flag(msg: str, args) -> str:
    """`--config.a.scal: unknown config key 'scal'; ...`: the flag that holds the typo'd key."""
    key = msg.removeprefix("unknown config key ").split(";")[0].strip("'\" ")
    for a in args:
        name = a.split("=", 1)[0]
        if name.startswith("-") and key in name.lstrip("-").split("."):
            return f"{name}: {msg}"
    return msg


def command_name(argv0: str) -> str:
    """`reproduce` for scripts/reproduce.py, `jaxdiff-reproduce` for the installed command."""
    name = os.path.basename(argv0)
    return name[:-3] if name.endswith(".py") else name


def one_line(e: BaseException) -> str:
    """The message of `e` on one line. A config file's own error is dug out from under absl's
    flag error and ml_collections' traceback-carrying wrapper; a config-key typo (an
    AttributeError of ml_collections around a KeyError) reads `unknown config key ...`."""
    while "Error whilst parsing config file" in str(e) and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__
    arg = e.args[0] if e.args else ""
    while isinstance(arg, BaseException):
        arg = arg.args[0] if arg.args else ""
    msg = str(arg) if isinstance(e, KeyError | AttributeError) else str(e)
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    text = "; ".join(lines) or type(e).__name__
    return f"unknown config key {text}" if isinstance(e, AttributeError) else text


def fail(prog: str, e: BaseException | str, console: bool = False):
    """Print `PROG: error: MESSAGE` as the last line on stderr and exit with status 2. From the
    command line the process ends at once (os._exit): the worker threads of orbax/asyncio
    would otherwise print their own tracebacks after the one line."""
    msg = e if isinstance(e, str) else one_line(e)
    sys.stdout.flush()
    sys.stderr.flush()
    if console:
        # Worker threads may be printing their own tracebacks (a failed orbax restore's
        # callbacks): the real stderr is moved aside first, so whatever they write from now on
        # goes to /dev/null and the line, written last to the real stderr, stays the last one.
        real = os.dup(sys.stderr.fileno())
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        os.write(real, f"{prog}: error: {msg}\n".encode())
        os._exit(EXIT_BAD_INPUT)
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def interrupted(prog: str):
    """Ctrl-C: `PROG: interrupted (SIGINT); ...` as the last line on stderr, exit status 130 (no
    traceback). Every file is written whole (atomic writes), so what was written is kept and
    the resumable commands (demo, reproduce, sweep, train) go on from it when run again."""
    sys.stdout.flush()
    print(f"{prog}: interrupted (SIGINT); what was already written is kept", file=sys.stderr)
    # a normal exit, not `fail`'s os._exit: multiprocessing's finalizers must run, or its
    # resource tracker prints a warning about the demo's worker queues after this line
    sys.exit(EXIT_INTERRUPTED)


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
    """--distributed / --coordinator / --num_processes / --process_id / --distributed_timeout,
    for the commands that run images on several processes (reproduce, sweep)."""
    flags.DEFINE_bool(
        "distributed",
        False,
        "run as one of several processes: jax.distributed.initialize() with the cluster "
        "auto-detected (Cloud TPU, SLURM, Open MPI)",
    )
    flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (implies --distributed)")
    flags.DEFINE_integer("num_processes", None, "number of processes (with --coordinator)")
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")
    flags.DEFINE_integer(
        "distributed_timeout",
        300,
        "seconds any wait between processes may last: every process connecting, a peer's "
        "missing heartbeat, the last barrier",
        lower_bound=1,
    )


def initialize_distributed() -> None:
    """jax.distributed.initialize from the flags of define_distributed_flags (no-op without).
    What can be checked first is (port free on process 0, ids in range), every wait is bounded
    by --distributed_timeout, and a failure is one line naming this process."""
    f = flags.FLAGS
    if not (f.distributed or f.coordinator):
        return
    from jaxdiff.sharding import initialize_distributed as init

    kwargs = {}
    if f.coordinator:
        if f.num_processes is None or f.process_id is None:
            raise app.UsageError("--coordinator needs --num_processes and --process_id")
        check_coordinator(f.coordinator, f.num_processes, f.process_id)
        kwargs = {
            "coordinator_address": f.coordinator,
            "num_processes": f.num_processes,
            "process_id": f.process_id,
        }
    init(timeout=f.distributed_timeout, **kwargs)


def check_coordinator(address: str, num_processes: int, process_id: int) -> None:
    """What can go wrong before jax.distributed.initialize, as one-line errors: a malformed
    HOST:PORT, a process count or id out of range, and (on process 0, which listens there) a
    coordinator port already in use on this host."""
    import socket

    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise app.UsageError(f"--coordinator={address!r} must be HOST:PORT")
    if num_processes < 1:
        raise app.UsageError(f"--num_processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
        raise app.UsageError(
            f"--process_id={process_id} must be in [0, {num_processes}) for "
            f"--num_processes={num_processes}"
        )
    if process_id != 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            s.bind(("", int(port)))
        except OSError as e:
            raise app.UsageError(
                f"--coordinator={address}: port {port} is in use on this host ({e.strerror}); "
                "process 0 listens there: pick a free port (or is process 0 started twice?)"
            ) from None


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
