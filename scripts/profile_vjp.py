"""Per-op XLA profile of the UNet's VJP w.r.t. x (DPS's network work), grouped by what runs.

    python -m scripts.profile_vjp --arch=ffhq256 --size=256 [--plain] [--top=30]

Compiles `x -> vjp(model(x))(model(x))` for one image, runs it once under `jax.profiler`, and maps
every XLA thunk in the trace back to the HLO instruction's `op_name` metadata: the forward part
(`jvp(...)`) and the transposed part (`transpose(jvp(...))`), the kind of op (a YNNPACK convolution,
a YNNPACK reduction, an XLA loop fusion) and the module it came from. `--plain` traces XLA's own
transposes instead of jaxdiff/models/fused.py's VJPs. docs/performance.md reads these tables.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from jaxdiff.models import build_model, fused

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "ffhq256", "a preset of jaxdiff.convert.presets (random weights)")
flags.DEFINE_integer("size", 256, "image size (any multiple of the network's total downsampling)")
flags.DEFINE_bool("plain", False, "XLA's own transposes (fused.USE_CUSTOM_VJP = False)")
flags.DEFINE_integer("top", 30, "rows to print")
flags.DEFINE_string("sampler", "", "profile this sampler's compiled step loop instead (e.g. dps)")
flags.DEFINE_integer("steps", 2, "respaced steps of --sampler")


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


def main(argv):
    del argv
    from jaxdiff.convert.presets import PRESETS

    fused.USE_CUSTOM_VJP = not FLAGS.plain
    model = build_model("adm", dict(PRESETS[FLAGS.arch]))
    s = FLAGS.size
    t = jnp.full((1,), 500, jnp.int32)
    x = jax.random.normal(jax.random.key(1), (1, s, s, 3), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x, t)["params"]

    def vjp(p, x):
        out, pull = jax.vjp(lambda x: model.apply({"params": p}, x, t), x)
        return pull(out)[0]

    args = (params, x)
    if FLAGS.sampler:
        from jaxdiff.diffusion import schedule_from_meta
        from jaxdiff.operators import get_noise, get_operator
        from jaxdiff.samplers import batched, get_sampler

        op = get_operator(  # scripts/benchmark.py's task: a quarter-area box hole
            "inpaint_box", image_shape=(s, s, 3), mask_len_range=(s // 2, s // 2 + 1),
            margin=(s // 16, s // 16),
        )  # fmt: skip
        noise = get_noise("gaussian", sigma=0.05)
        diffusion = {"num_timesteps": 1000, "beta_schedule": "linear"}
        schedule = schedule_from_meta(
            {**diffusion, "variance_type": "learned_range", "schedule_dtype": "float64"},
            respacing=str(FLAGS.steps),
        )
        sample = get_sampler(FLAGS.sampler)(
            lambda p, x, t: model.apply({"params": p}, x, t), schedule, operator=op,
            noise=noise, image_shape=(s, s, 3),
        )  # fmt: skip
        keys = jax.random.split(jax.random.key(0), 1)
        op_params = jax.vmap(op.sample)(keys)
        args = (params, keys, jax.vmap(op.apply)(op_params, x), op_params, {})
        compiled = jax.jit(batched(sample)).lower(*args).compile()
    else:
        compiled = jax.jit(vjp).lower(*args).compile()
    index = hlo_index(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    print(f"one call: {time.perf_counter() - t0:.2f} s (unprofiled)")
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{d}/plugins/profile/*/perfetto_trace.json.gz")
        events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in index:
            key = classify(e["name"], index[e["name"]][2])
            total[key] += e.get("dur", 0) / 1e3
            count[key] += 1
    phase = collections.Counter()
    for (ph, kind, _), ms in total.items():
        phase[(ph, kind.split(":")[0])] += ms
    print(f"thunk time {sum(total.values()):.0f} ms;", ", ".join(
        f"{p} {k} {ms:.0f}" for (p, k), ms in sorted(phase.items())))  # fmt: skip
    for key, ms in total.most_common(FLAGS.top):
        print(f"{ms:9.1f} ms {count[key]:4d}  {' '.join(key)}")


if __name__ == "__main__":
    app.run(main)
