"""Time each sampler per image, compile separate, and write the figures as JSON.

    python -m scripts.benchmark --arch=tiny,demo --samplers=ddpm,dps --batch=1,4 --steps=10 \
        --dtype=float32,bfloat16 --out=bench.json

Architectures: `tiny` (the fixture-sized ADM, 1.4M parameters, 32x32), `demo` (the shipped demo
prior), `ffhq256` / `imagenet256_uncond` (the full-size presets with random weights: timings need
no checkpoint), or any converted checkpoint folder. Per (arch, sampler, batch, dtype) it records:
compile seconds, seconds per image per step, images/s, peak device memory (where the backend
reports it) and XLA's compiled-memory estimate, and the model FLOPs per image per step from XLA's
cost analysis of one sampler step's network work (a forward; for DPS a forward plus its VJP).
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxdiff.diffusion import schedule_from_meta
from jaxdiff.models import build_model, load_pretrained, model_fn, param_count
from jaxdiff.operators import get_noise, get_operator
from jaxdiff.samplers import batched, get_sampler

FLAGS = flags.FLAGS
flags.DEFINE_list("arch", ["tiny"], "tiny | demo | ffhq256 | imagenet256_uncond | a checkpoint dir")
flags.DEFINE_list("samplers", ["ddpm", "tweedie", "sdedit", "score_ald", "dps"], "samplers to time")
flags.DEFINE_list("batch", ["1", "4"], "batch sizes (images per call)")
flags.DEFINE_list("dtype", ["float32"], "compute dtypes: float32, bfloat16")
flags.DEFINE_integer("steps", 10, "respaced sampling steps per call")
flags.DEFINE_integer("repeats", 3, "timed calls after the warm-up; the median is reported")
flags.DEFINE_string("out", "benchmark.json", "where the JSON goes")

# The fixture-sized ADM (tests/fixtures/adm_tiny.json kwargs): small enough for any CPU.
TINY = {
    "image_size": 32,
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 6,
    "num_res_blocks": 1,
    "attention_resolutions": (2, 4),
    "dropout": 0.0,
    "channel_mult": (1, 2, 2),
    "conv_resample": True,
    "num_classes": None,
    "num_heads": 1,
    "num_head_channels": 16,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_new_attention_order": False,
}
LINEAR_1000 = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "variance_type": "learned_range",
    "schedule_dtype": "float64",
}


def load_arch(name: str):
    """(arch, model_config, diffusion, params) with random weights for the named presets."""
    if name in ("tiny", "ffhq256", "imagenet256_uncond"):
        if name == "tiny":
            config = dict(TINY)
        else:
            from convert_weights.presets import PRESETS

            config = dict(PRESETS[name])
        model = build_model("adm", config)
        size = config["image_size"]
        x = jnp.zeros((1, size, size, config["in_channels"]), jnp.float32)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))
        return "adm", config, dict(LINEAR_1000), params["params"]
    path = (
        pathlib.Path(__file__).parents[1] / "jaxdiff/assets/demo_prior" if name == "demo" else name
    )
    _, params, meta = load_pretrained(path)
    return meta["architecture"], meta["model_config"], meta["diffusion"], params


def task_for(size: int):
    """A box-inpainting task at the model's size (a quarter-area hole): cheap, linear, official
    noise. The operator's cost is negligible next to the UNet's at every size benchmarked."""
    side = size // 2
    op = get_operator(
        "inpaint_box",
        image_shape=(size, size, 3),
        mask_len_range=(side, side + 1),
        margin=(size // 16, size // 16),
    )
    return op, get_noise("gaussian", sigma=0.05)


def network_flops(model, params, size: int, with_grad: bool) -> float | None:
    """XLA's FLOP count for one image's network work in one step (a forward, or forward + VJP)."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    t = jnp.full((1,), 500, jnp.int32)

    def fwd(p, x):
        return model.apply({"params": p}, x, t)

    fn = (lambda p, x: jax.grad(lambda x: jnp.sum(fwd(p, x)))(x)) if with_grad else fwd
    try:
        cost = jax.jit(fn).lower(params, x).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement cost analysis
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) or None


def peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_one(arch, config, diffusion, params, sampler: str, batch: int, dtype: str) -> dict:
    size = int(config.get("image_size", config.get("sample_size")))
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    model = build_model(arch, config, dtype=compute)
    op, noise = task_for(size)
    schedule = schedule_from_meta(diffusion, respacing=str(FLAGS.steps))
    make = get_sampler(sampler)
    sample = make(model_fn(model), schedule, operator=op, noise=noise, image_shape=(size, size, 3))
    run = jax.jit(batched(sample))

    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    op_params = jax.vmap(op.sample)(keys)
    y = jax.vmap(op.apply)(op_params, x)
    args = (params, keys, y, op_params, {})

    t0 = time.perf_counter()
    compiled = run.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    call_s = float(np.median(times))
    steps = 1 if sampler == "tweedie" else schedule.num_steps
    mem = compiled.memory_analysis()
    flops = network_flops(model, params, size, with_grad=sampler == "dps")
    return {
        "arch": arch,
        "image_size": size,
        "sampler": sampler,
        "batch": batch,
        "dtype": dtype,
        "steps": steps,
        "compile_seconds": round(compile_s, 3),
        "seconds_per_call": call_s,
        "seconds_per_image_per_step": call_s / (batch * steps),
        "images_per_second": batch / call_s,
        "peak_device_bytes": peak_memory(),
        "compiled_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "network_flops_per_image_per_step": flops,
    }


def main(argv):
    del argv
    import flax
    import jaxlib

    results = []
    for name in FLAGS.arch:
        arch, config, diffusion, params = load_arch(name)
        print(f"{name}: {arch}, {param_count(params):,} parameters", flush=True)
        for sampler in FLAGS.samplers:
            for dtype in FLAGS.dtype:
                for batch in map(int, FLAGS.batch):
                    r = bench_one(arch, config, diffusion, params, sampler, batch, dtype)
                    r["model"] = name
                    results.append(r)
                    print(
                        f"  {sampler:9s} b={batch:<3d} {dtype:8s}"
                        f" compile {r['compile_seconds']:6.1f}s"
                        f"  {r['seconds_per_image_per_step'] * 1e3:8.2f} ms/img/step"
                        f"  {r['images_per_second']:8.3f} img/s",
                        flush=True,
                    )
    dev = jax.devices()[0]
    out = {
        "device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count()},
        "host": {"machine": platform.machine(), "python": sys.version.split()[0]},
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
        },
        "steps": FLAGS.steps,
        "results": results,
    }
    path = pathlib.Path(FLAGS.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
