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
passes `compiler_options=compiler_options()` to get it.
"""

from __future__ import annotations

import functools
import os

import jax

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


def compiler_options(backend: str | None = None) -> dict | None:
    """The options for `jax.jit(..., compiler_options=...)` or `.compile(...)` (None: XLA's
    defaults)."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or library_fusions_enabled(backend):
        return None
    return dict(_CPU_OFF) if _cpu_accepts_off() else None


def compile_lowered(lowered):
    """`lowered.compile()` with `compiler_options()`."""
    options = compiler_options()
    return lowered.compile(compiler_options=options) if options else lowered.compile()
