"""What every command-line entry point shares: `run(main)` parses the flags and calls `main`.

Each script (scripts/*.py, convert_weights) defines its absl flags at module level and ends with

    def console() -> None:  # the console entry point (setup.py)
        cli.run(main)

    if __name__ == "__main__":
        console()
"""

from __future__ import annotations

import sys

from absl import app


def run(main, argv=None) -> None:
    """absl's app.run(main), with `--config=` values resolved (see resolve_config_argv)."""
    argv = list(sys.argv if argv is None else argv)
    app.run(main, argv=resolve_config_argv(argv))


def resolve_config_argv(argv: list[str]) -> list[str]:
    """`--config=PATH[:ARG]` as given (filled in by jaxdiff.config_lib where packaged)."""
    return argv


__all__ = ["resolve_config_argv", "run"]
