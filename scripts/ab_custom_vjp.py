"""A/B in one process: XLA's own transposes vs jaxdiff/models/fused.py's VJPs, per sampler step.

    python -m scripts.ab_custom_vjp --size=128 --steps=1 --repeats=2 --samplers=ddpm,dps

Random `ffhq256` weights at `--size` (the network is resolution-agnostic), scripts/benchmark.py's
box-inpainting task. Each (sampler, variant) is compiled with `fused.USE_CUSTOM_VJP` set before
tracing, then the calls are interleaved and the minimum per step is printed, with the largest
difference between the variants' samples (docs/performance.md).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from jaxdiff.diffusion import schedule_from_meta
from jaxdiff.models import build_model, fused
from jaxdiff.operators import get_noise, get_operator
from jaxdiff.samplers import batched, get_sampler

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 128, "image size")
flags.DEFINE_integer("steps", 1, "respaced steps per call")
flags.DEFINE_integer("repeats", 2, "interleaved timed rounds")
flags.DEFINE_list("samplers", ["ddpm", "dps"], "samplers to compare")


def main(argv):
    del argv
    from jaxdiff.convert.presets import PRESETS

    s = FLAGS.size
    model = build_model("adm", dict(PRESETS["ffhq256"]))
    x = jnp.zeros((1, s, s, 3), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((1,), jnp.int32))["params"]
    diffusion = {"num_timesteps": 1000, "beta_schedule": "linear"}
    schedule = schedule_from_meta(
        {**diffusion, "variance_type": "learned_range", "schedule_dtype": "float64"},
        respacing=str(FLAGS.steps),
    )
    op = get_operator(
        "inpaint_box", image_shape=(s, s, 3), mask_len_range=(s // 2, s // 2 + 1),
        margin=(s // 16, s // 16),
    )  # fmt: skip
    keys = jax.random.split(jax.random.key(0), 1)
    op_params = jax.vmap(op.sample)(keys)
    args = (params, keys, jax.vmap(op.apply)(op_params, x), op_params, {})
    compiled = {}
    for name in FLAGS.samplers:
        for variant in ("plain", "fused"):
            fused.USE_CUSTOM_VJP = variant == "fused"
            sample = get_sampler(name)(
                lambda p, x, t: model.apply({"params": p}, x, t), schedule, operator=op,
                noise=get_noise("gaussian", sigma=0.05), image_shape=(s, s, 3),
            )  # fmt: skip
            c = jax.jit(batched(sample)).lower(*args).compile()
            mb = c.memory_analysis().temp_size_in_bytes / 2**20
            print(f"{name}:{variant} compiled, temp {mb:.0f} MiB", flush=True)
            compiled[(name, variant)] = c
    fused.USE_CUSTOM_VJP = True
    outs = {k: c(*args) for k, c in compiled.items()}
    for name in FLAGS.samplers:
        d = jnp.max(jnp.abs(outs[(name, "plain")].x0 - outs[(name, "fused")].x0))
        print(f"{name}: max |x0 plain - x0 fused| = {float(d):.3g}")
    times = {k: [] for k in compiled}
    for _ in range(FLAGS.repeats):
        for k, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[k].append((time.perf_counter() - t0) / FLAGS.steps)
    for (name, variant), ts in times.items():
        print(f"{name}:{variant:5s} {min(ts):8.3f} s/step (all {[round(t, 3) for t in ts]})")
    for name in FLAGS.samplers:
        if name != "ddpm" and "ddpm" in FLAGS.samplers:
            for v in ("plain", "fused"):
                r = min(times[(name, v)]) / min(times[("ddpm", v)])
                print(f"{name} / ddpm ({v}) = {r:.2f}")


if __name__ == "__main__":
    app.run(main)
