"""XLA compiler options of jaxdiff's compiled programs, chosen per backend.

XLA:CPU hands convolutions, dots and reductions to the YNNPACK library ("library fusions", on by
default in recent jaxlib). On the CPU measured (docs/performance.md: a 2-core x86 machine) XLA's
own emitters are faster: the demo UNet's forward 1.7x and its input gradient 1.6x (32 px, batch 3),
the ffhq256 UNet's forward and gradient 1.2x (batch 1) with a quarter less temporary memory for the
gradient. So jaxdiff compiles with them off on CPU; other backends keep XLA's defaults.

`USE_LIBRARY_FUSIONS` (module level, for A/B timings and tests) or $JAXDIFF_XLA_LIBRARY_FUSIONS
(`on` / `off` / `auto`) forces either; `auto` is the rule above. A jaxlib that does not know the
option compiles with its defaults. Programs read the choice when they are compiled: the programs of
the command-line tools and `ShardedBatch`, the benchmark's and the demo's; a user's own `jax.jit`
passes `compiler_options=compiler_options()` to get it. `backend_optimization_level` sets XLA:CPU's
LLVM level for those programs (the demo compiles at 1: its programs are compile-bound).
"""

from __future__ import annotations

import contextlib
import functools
import os

import jax
import numpy as np

USE_LIBRARY_FUSIONS: bool | None = None
"""True / False forces XLA's library fusions on / off (the benchmark's A/B, tests); None: the
environment, else `auto`."""
ENV = "JAXDIFF_XLA_LIBRARY_FUSIONS"
_CPU_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}  # an empty list: no YNNPACK fusion


def library_fusions_enabled(backend: str | None = None) -> bool:
    """Whether programs compiled for `backend` (default: JAX's) keep XLA's library fusions."""
    if USE_LIBRARY_FUSIONS is not None:
        return bool(USE_LIBRARY_FUSIONS)
    setting = env_setting()
    if setting != "auto":
        return setting == "on"
    return (backend or jax.default_backend()) != "cpu"


def env_setting() -> str:
    """$JAXDIFF_XLA_LIBRARY_FUSIONS as `on`, `off` or `auto` (unset); anything else is a
    ValueError (the commands check it before they write anything)."""
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return "on"
    if setting in ("off", "0", "false", "no"):
        return "off"
    if setting not in ("auto", ""):
        raise ValueError(f"${ENV}={setting!r}: expected on, off or auto")
    return "auto"


@functools.cache
def _cpu_accepts_off() -> bool:
    """Whether this jaxlib's XLA:CPU knows the option (an unknown one fails the compile)."""
    try:
        jax.jit(lambda x: x + 1, backend="cpu").lower(1.0).compile(compiler_options=_CPU_OFF)
    except Exception:  # noqa: BLE001 - any refusal means: keep XLA's defaults
        return False
    return True


BACKEND_OPTIMIZATION_LEVEL: int | None = None
"""XLA:CPU's backend (LLVM) optimisation level for jaxdiff's programs; None: XLA's default (2).
A program of a small network spends most of its time compiling, one kernel at a time, and level 1
compiles a quarter faster with the same run time (the demo: docs/performance.md); a full-size
network's forward runs slower at level 1 (ffhq256: 4.9 against 4.2 s per call), so the default
stays. Set through `backend_optimization_level`; $XLA_FLAGS naming a level wins."""
_LEVEL_FLAG = "xla_backend_optimization_level"


def check_optimization_level(level) -> int | None:
    """`level` as an int in 0-3 (or None), else one ValueError naming it."""
    if level is None:
        return None
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level not in range(4):
        raise ValueError(f"XLA backend optimisation level must be 0, 1, 2 or 3, got {level!r}")
    return int(level)


@contextlib.contextmanager
def backend_optimization_level(level: int | None):
    """Within the block, jaxdiff's CPU programs compile at LLVM optimisation `level` (0-3; None:
    XLA's default). Module-wide, not per thread: meant for a command's whole run (the demo's)."""
    global BACKEND_OPTIMIZATION_LEVEL
    before = BACKEND_OPTIMIZATION_LEVEL
    BACKEND_OPTIMIZATION_LEVEL = check_optimization_level(level)
    try:
        yield
    finally:
        BACKEND_OPTIMIZATION_LEVEL = before


def compiler_options(backend: str | None = None) -> dict | None:
    """The options for `jax.jit(..., compiler_options=...)` or `.compile(...)` (None: XLA's
    defaults)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return None
    options = {}
    if not library_fusions_enabled(backend) and _cpu_accepts_off():
        options.update(_CPU_OFF)
    level = BACKEND_OPTIMIZATION_LEVEL
    if level is not None and _LEVEL_FLAG not in os.environ.get("XLA_FLAGS", ""):
        options[_LEVEL_FLAG] = level
    return options or None


def compile_lowered(lowered):
    """`lowered.compile()` with `compiler_options()`."""
    options = compiler_options()
    return lowered.compile(compiler_options=options) if options else lowered.compile()


# Threefry-2x32 (Salmon et al. 2011, 20 rounds), as JAX computes it for jax.random: the rotation
# constants of its two alternating groups of four rounds and the key-schedule parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _threefry2x32_straight(key1, key2, x1, x2):
    """The hash as 20 rounds of straight-line uint32 arithmetic: one elementwise expression, which
    XLA fuses into one kernel."""
    u32 = np.uint32
    ks = (key1, key2, key1 ^ key2 ^ u32(_PARITY))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << u32(r)) | (x2 >> u32(32 - r))
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + u32(i + 1)
    return x1, x2


def straight_line_threefry() -> bool:
    """Lower jax.random's threefry hash on XLA:CPU as straight-line code; returns whether it did.

    JAX lowers it on the CPU as a 5-trip while loop (on other backends: straight-line code or a
    kernel). XLA:CPU compiles each trip's body as several small kernels at ~30 ms of LLVM time
    each, for every random draw of a program: ~100 of the ~380 kernels of a demo-prior sampler
    program that calls the network once. Straight-line, the hash fuses into the draw's one kernel:
    the same bits (tests/test_xla_options.py), ~0.5-4 s less compilation per sampler program on a
    2-core CPU, no change in run time. The commands call it (jaxdiff.cli.run); importing jaxdiff
    changes no JAX setting. A JAX without the public names it uses keeps its own lowering."""
    try:
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir

        rule = mlir.lower_fun(_threefry2x32_straight, multiple_results=True)
        mlir.register_lowering(threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError):
        return False
    global THREEFRY_LOWERED
    THREEFRY_LOWERED = True
    return True


THREEFRY_LOWERED = False
"""Whether straight_line_threefry() took effect in this process (a worker process repeats it)."""
