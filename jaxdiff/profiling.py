"""Where the time of the UNet's VJP goes, and what jaxdiff/models/fused.py's VJPs change
(scripts/profile_vjp.py, scripts/ab_custom_vjp.py; docs/performance.md reads both).

Both use random preset weights at any image size (the ADM is resolution-agnostic) and
jaxdiff/benchmark.py's box-inpainting task. `fused.USE_CUSTOM_VJP` is read when a function is
traced, so each variant is set before compiling and the switch is restored afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxdiff import benchmark, xla_options
from jaxdiff.models import fused


@contextlib.contextmanager
def custom_vjp(enabled: bool):
    """fused.USE_CUSTOM_VJP set to `enabled` for the functions traced inside."""
    before = fused.USE_CUSTOM_VJP
    fused.USE_CUSTOM_VJP = enabled
    try:
        yield
    finally:
        fused.USE_CUSTOM_VJP = before


def hlo_index(text: str) -> dict:
    """HLO instruction name -> (shape, opcode, op_name metadata)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) (\w+)\(", line)
        if m:
            name = re.search(r'op_name="([^"]*)"', line)
            out[m.group(1)] = (m.group(2), m.group(3), name.group(1) if name else "")
    return out


def classify(thunk: str, op_name: str) -> tuple[str, str, str]:
    """(phase, op kind, module) of one thunk."""
    phase = "bwd" if "transpose(" in op_name else ("fwd" if "ADMUNet" in op_name else "other")
    parts = [p for p in op_name.split("/") if p]
    last = parts[-1] if parts else "?"
    mods = [p for p in parts[1:-1] if not p.startswith(("jit(", "jvp(", "transpose("))]
    module = re.sub(r"_\d+$", "", mods[-1]) if mods else ""
    if thunk.startswith("ynn"):
        kind = "conv" if "conv" in last else f"ynn:{last}"
    else:
        kind = f"loop:{last}"
    return phase, kind, module


def _compile_vjp(arch: str, size: int):
    """(compiled, args) of `x -> vjp(model(x))(model(x))` for one image (DPS's network work)."""
    model, params = benchmark.random_adm(benchmark.preset_config(arch, size))
    t = jnp.full((1,), 500, jnp.int32)
    x = jax.random.normal(jax.random.key(1), (1, size, size, 3), jnp.float32)

    def vjp(p, x):
        out, pull = jax.vjp(lambda x: model.apply({"params": p}, x, t), x)
        return pull(out)[0]

    return xla_options.compile_lowered(jax.jit(vjp).lower(params, x)), (params, x)


def _compile_sampler(arch: str, size: int, sampler: str, steps: int):
    """(compiled, args) of one image of `sampler`'s step loop (benchmark.compile_method)."""
    config = benchmark.preset_config(arch, size)
    _, params = benchmark.random_adm(config)
    diffusion = benchmark.LINEAR_1000
    compiled, args, *_ = benchmark.compile_method(
        "adm", config, diffusion, params, sampler, 1, "float32", steps
    )
    return compiled, args


def _trace_events(compiled, args) -> list[dict]:
    """The trace events of one call under jax.profiler."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{d}/plugins/profile/*/perfetto_trace.json.gz")
        with gzip.open(path) as f:
            events = json.load(f)
    return events["traceEvents"] if isinstance(events, dict) else events


def profile_vjp(arch: str, size: int, plain: bool, sampler: str = "", steps: int = 2) -> dict:
    """One profiled call of the network's VJP (or of `sampler`'s compiled step loop), every XLA
    thunk mapped back to its HLO instruction's op_name: `seconds` (one unprofiled call),
    `thunks` [(ms, count, phase, kind, module)] slowest first, `phases` {(phase, kind): ms}.
    `plain`: XLA's own transposes instead of fused.py's VJPs."""
    with custom_vjp(not plain):
        if sampler:
            compiled, args = _compile_sampler(arch, size, sampler, steps)
        else:
            compiled, args = _compile_vjp(arch, size)
    index = hlo_index(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - t0
    total, count = collections.Counter(), collections.Counter()
    for e in _trace_events(compiled, args):
        if e.get("ph") == "X" and e["name"] in index:
            key = classify(e["name"], index[e["name"]][2])
            total[key] += e.get("dur", 0) / 1e3
            count[key] += 1
    phases = collections.Counter()
    for (ph, kind, _), ms in total.items():
        phases[(ph, kind.split(":")[0])] += ms
    thunks = [(ms, count[key], *key) for key, ms in total.most_common()]
    return {"seconds": seconds, "thunks": thunks, "phases": dict(sorted(phases.items()))}


def ab_custom_vjp(
    size: int,
    steps: int,
    repeats: int,
    samplers: Sequence[str],
    log: Callable[[str], None] = print,
) -> dict:
    """Each sampler compiled with XLA's transposes ("plain") and fused.py's VJPs ("fused") on
    random ffhq256 weights, the calls interleaved `repeats` times: `temp_mib` {(sampler, variant):
    compiled temporary memory}, `max_abs_diff` {sampler: max |x0 plain - x0 fused|},
    `seconds_per_step` {(sampler, variant): [one per round]}, `ratio_to_ddpm` {(sampler,
    variant): min seconds over DDPM's}, compiles `log`ged as they finish."""
    config = benchmark.preset_config("ffhq256", size)
    _, params = benchmark.random_adm(config)
    compiled, temp_mib, args = {}, {}, None
    for name in samplers:
        for variant in ("plain", "fused"):
            with custom_vjp(variant == "fused"):
                c, args, *_ = benchmark.compile_method(
                    "adm", config, benchmark.LINEAR_1000, params, name, 1, "float32", steps
                )
            temp_mib[(name, variant)] = c.memory_analysis().temp_size_in_bytes / 2**20
            log(f"{name}:{variant} compiled, temp {temp_mib[(name, variant)]:.0f} MiB")
            compiled[(name, variant)] = c
    outs = {k: c(*args) for k, c in compiled.items()}
    diff = {
        name: float(jnp.max(jnp.abs(outs[(name, "plain")].x0 - outs[(name, "fused")].x0)))
        for name in samplers
    }
    times = {k: [] for k in compiled}
    for _ in range(repeats):
        for k, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[k].append((time.perf_counter() - t0) / steps)
    ratio = {}
    if "ddpm" in samplers:
        for name in samplers:
            for v in ("plain", "fused"):
                if name != "ddpm":
                    ratio[(name, v)] = min(times[(name, v)]) / min(times[("ddpm", v)])
    return {
        "temp_mib": temp_mib,
        "max_abs_diff": diff,
        "seconds_per_step": times,
        "ratio_to_ddpm": ratio,
    }
