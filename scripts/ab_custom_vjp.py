"""A/B in one process: XLA's own transposes vs jaxdiff/models/fused.py's VJPs, per sampler step.

    python -m scripts.ab_custom_vjp --size=128 --steps=1 --repeats=2 --samplers=ddpm,dps

Random `ffhq256` weights at `--size` (the network is resolution-agnostic), jaxdiff/benchmark.py's
box-inpainting task. Each (sampler, variant) is compiled with `fused.USE_CUSTOM_VJP` set before
tracing, then the calls are interleaved and the minimum per step is printed, with the largest
difference between the variants' samples (docs/performance.md; the work: jaxdiff/profiling.py).
"""

from __future__ import annotations

from absl import flags

from jaxdiff import cli, profiling

_SIZE = flags.DEFINE_integer("size", 128, "image size")
_STEPS = flags.DEFINE_integer("steps", 1, "respaced steps per call")
_REPEATS = flags.DEFINE_integer("repeats", 2, "interleaved timed rounds")
_SAMPLERS = flags.DEFINE_list("samplers", ["ddpm", "dps"], "samplers to compare")


def main(argv):
    cli.no_positional_args(argv)
    ab = profiling.ab_custom_vjp(
        _SIZE.value,
        _STEPS.value,
        _REPEATS.value,
        _SAMPLERS.value,
        log=lambda line: print(line, flush=True),
    )
    for name, d in ab["max_abs_diff"].items():
        print(f"{name}: max |x0 plain - x0 fused| = {d:.3g}")
    for (name, variant), ts in ab["seconds_per_step"].items():
        print(f"{name}:{variant:5s} {min(ts):8.3f} s/step (all {[round(t, 3) for t in ts]})")
    for (name, variant), r in ab["ratio_to_ddpm"].items():
        print(f"{name} / ddpm ({variant}) = {r:.2f}")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
