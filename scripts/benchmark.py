"""Time each sampler per network evaluation, compile separate, and write the figures as JSON.

    python -m scripts.benchmark --arch=ffhq256 --samplers=ddpm,dps --batch=1 --steps=3

Architectures: `tiny` (the fixture-sized ADM, 1.4M parameters, 32x32), `demo` (the shipped demo
prior), `ffhq256` / `imagenet256_uncond` (the full-size presets with random weights: timings need
no checkpoint), or any converted checkpoint folder. Methods come from the sampler registry
(`jaxdiff.samplers.SAMPLERS`, default: all), and so does each method's number of network
evaluations per image (NFE), so the cost of a run reads NFE x seconds per NFE. What is measured
and how: jaxdiff/benchmark.py; docs/performance.md reads the figures.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from jaxdiff import benchmark, cli, xla_options
from jaxdiff.models import fused

_ARCH = flags.DEFINE_list(
    "arch", ["tiny"], "tiny | demo | ffhq256 | imagenet256_uncond | a checkpoint dir"
)
_SAMPLERS = flags.DEFINE_list("samplers", None, "samplers to time (default: every registered one)")
_BATCH = flags.DEFINE_list("batch", ["1", "4"], "batch sizes (images per call)")
_DTYPE = flags.DEFINE_list("dtype", ["float32"], "compute dtypes: float32, bfloat16")
_STEPS = flags.DEFINE_integer("steps", 10, "respaced sampling steps per call", lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "interleaved timed rounds after the warm-up (min and median)", lower_bound=1
)
_CUSTOM_VJP = flags.DEFINE_enum(
    "custom_vjp",
    "auto",
    ["auto", "on", "off"],
    "the hand-written VJPs of models/fused.py: auto (on for CPU only), or forced on / off",
)
_LIBRARY_FUSIONS = flags.DEFINE_enum(
    "library_fusions",
    "auto",
    ["auto", "on", "off"],
    "XLA:CPU's YNNPACK library fusions (jaxdiff/xla_options.py): auto (off on CPU), or forced",
)
_REMAT = flags.DEFINE_list(
    "remat", ["none"], "block rematerialisation modes to compare: none, blocks (models/remat.py)"
)
_OUT = flags.DEFINE_string("out", "benchmark.json", "where the JSON goes")
_LATENT = flags.DEFINE_integer(
    "latent",
    0,
    "instead: the SD-1.5-sized UNet and VAE at this latent size (jaxdiff/latent_benchmark.py)",
)
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", None, "with --latent: an interpreter with torch + diffusers for the same cases"
)


def main(argv):
    cli.no_positional_args(argv)
    batches = [int(b) for b in _BATCH.value]
    if not batches or min(batches) < 1:  # before anything compiles (0: a ZeroDivisionError)
        raise app.UsageError(f"--batch={','.join(_BATCH.value)}: batch sizes must be >= 1")
    if _LATENT.value:
        from jaxdiff import latent_benchmark

        out = latent_benchmark.run(_LATENT.value, batches[0], _REPEATS.value, _TORCH_PYTHON.value)
        return _write(out)
    if _CUSTOM_VJP.value != "auto":
        fused.USE_CUSTOM_VJP = _CUSTOM_VJP.value == "on"
    if _LIBRARY_FUSIONS.value != "auto":
        xla_options.USE_LIBRARY_FUSIONS = _LIBRARY_FUSIONS.value == "on"
    out = benchmark.run_benchmark(
        _ARCH.value,
        _SAMPLERS.value,
        batches,
        _DTYPE.value,
        _STEPS.value,
        _REPEATS.value,
        _REMAT.value,
        log=lambda line: print(line, flush=True),
    )
    for row in out["ratios"]:
        print(
            f"{row['model']} b={row['batch']} {row['dtype']}: {row['sampler']} / ddpm per NFE ="
            f" {row['ratio_to_ddpm']:.2f} (min), {row['ratio_to_ddpm_median']:.2f} (median)"
        )
    for row in out["remat_ratios"]:
        mem = row["memory_ratio"]
        print(
            f"{row['model']} b={row['batch']} {row['dtype']} {row['sampler']}: remat={row['remat']}"
            f" / none: step time x{row['time_ratio']:.2f}"
            + (f", temp memory per image x{mem:.2f}" if mem else "")
        )
    for row in out["batch_ratios"]:
        mem = row["memory_per_image_ratio"]
        print(
            f"{row['model']} {row['dtype']} {row['sampler']} remat={row['remat']}: batch"
            f" {row['batch']} / 1 per image: time x{row['time_per_image_ratio']:.2f}"
            + (f", temp memory x{mem:.2f}" if mem else "")
        )
    _write(out)


def _write(out: dict) -> None:
    path = pathlib.Path(_OUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
