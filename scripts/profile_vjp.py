"""Per-op XLA profile of the UNet's VJP w.r.t. x (DPS's network work), grouped by what runs.

    python -m scripts.profile_vjp --arch=ffhq256 --size=256 [--plain] [--top=30]

Compiles `x -> vjp(model(x))(model(x))` for one image, runs it once under `jax.profiler`, and maps
every XLA thunk in the trace back to the HLO instruction's `op_name` metadata: the forward part
(`jvp(...)`) and the transposed part (`transpose(jvp(...))`), the kind of op (a YNNPACK convolution,
a YNNPACK reduction, an XLA loop fusion) and the module it came from. `--plain` traces XLA's own
transposes instead of jaxdiff/models/fused.py's VJPs. docs/performance.md reads these tables; the
work is jaxdiff/profiling.py's.
"""

from __future__ import annotations

from absl import flags

from jaxdiff import cli, profiling

_ARCH = flags.DEFINE_string(
    "arch", "ffhq256", "a preset of jaxdiff.convert.presets (random weights)"
)
_SIZE = flags.DEFINE_integer(
    "size", 256, "image size (any multiple of the network's total downsampling)"
)
_PLAIN = flags.DEFINE_bool("plain", False, "XLA's own transposes (fused.USE_CUSTOM_VJP = False)")
_TOP = flags.DEFINE_integer("top", 30, "rows to print")
_SAMPLER = flags.DEFINE_string(
    "sampler", "", "profile this sampler's compiled step loop instead (e.g. dps)"
)
_STEPS = flags.DEFINE_integer("steps", 2, "respaced steps of --sampler")


def main(argv):
    cli.no_positional_args(argv)
    profile = profiling.profile_vjp(
        _ARCH.value, _SIZE.value, _PLAIN.value, sampler=_SAMPLER.value, steps=_STEPS.value
    )
    print(f"one call: {profile['seconds']:.2f} s (unprofiled)")
    total = sum(row[0] for row in profile["thunks"])
    phases = ", ".join(f"{p} {k} {ms:.0f}" for (p, k), ms in profile["phases"].items())
    print(f"thunk time {total:.0f} ms; {phases}")
    for ms, count, *key in profile["thunks"][: _TOP.value]:
        print(f"{ms:9.1f} ms {count:4d}  {' '.join(key)}")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
