"""The sampler registry and the set-up every sampler shares.

Each method file registers its factory at the definition site and declares there what it needs
and offers, so the driver, the demo, the sweep, the table and the benchmark list methods from
`SAMPLERS` instead of hard-coded tuples, and nothing is sniffed from signatures:

    @register_sampler("ddrm", needs=("operator", "linear", "svd", "measurement"),
                      hparams={"eta": 0.85, "eta_b": 1.0}, nfe=per_step,
                      ranges={"eta": "[0, 1]", "eta_b": "[0, 1]"})
    def make_ddrm(model_fn, schedule, *, operator, noise, defaults, loop, **options):
        ...
        return sample      # sample(params, key, y, op_params, hparams, replay, valid)

`SAMPLERS.get(name)` is a `SamplerSpec`; calling it (`get_sampler(name)(model_fn, schedule,
operator=..., scale=0.3, snapshot_every=10)`) checks the declared needs against the operator,
splits the keyword arguments into traced-hparam defaults, loop options and static options, and
calls the factory. The factory receives `defaults` (the traced hparams' defaults, overridden per
call by the sample function's `hparams`) and `loop` (`LoopOptions`), and builds its sample
function from `initial_x`, `predict_x0` (common.py) and `chain` (below), so that a method file
holds its update alone.

Every traced hyperparameter declares its valid range (`ranges`, interval notation: "[0, 1]",
"(0, 10]", alternatives joined by "|" for a sentinel: "-1 | [0, 999]"), so a config or a sweep
value outside it is refused by name before anything compiles (`SamplerSpec.check_hparams`), and
the range's edges are what the tests run every method at. Values traced inside the scan are
still watched by the loop's NaN guard.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import ConfigError
from jaxdiff.registry import Registry
from jaxdiff.samplers.common import SampleResult
from jaxdiff.samplers.latent_common import check_latent
from jaxdiff.samplers.loop import run_chain

SAMPLERS: Registry = Registry("sampler")

NEEDS = frozenset({"operator", "linear", "svd", "measurement", "guide", "mask", "latent_prior"})
"""operator: a forward model A. linear: A must be linear (adjoint / pseudo-inverse). svd: A must
offer `.svd` (DDRM, DDNM). measurement: the sample function reads y. guide: the method starts from
an image made from y (SDEdit, Tweedie), so a driver may pass `guide=`. mask: A must be a pixel
mask (`operator.pixel_mask`, the inpainting operators; RePaint). latent_prior: the method
samples in a latent space and reaches the decoder / encoder through `latent=LatentFns(...)`
(samplers/latent_common.py); given to a pixel method, or missing for a latent one, it is refused
with one ValueError."""


class LoopOptions(NamedTuple):
    """What the shared loop records, for every sampler alike (see samplers/loop.py)."""

    keep_trajectory: bool = False
    snapshot_every: int = 0
    progress_every: int = 0


@dataclasses.dataclass(frozen=True)
class Range:
    """A hyperparameter's valid values: intervals and single values, written as declared
    ("[0, 1]", "(0, 10]", "-1 | [0, 999]"); NaN is never inside."""

    text: str
    parts: tuple  # ((lo, hi, lo_open, hi_open), ...)

    @classmethod
    def parse(cls, text: str) -> Range:
        parts = []
        for part in (p.strip() for p in str(text).split("|")):
            if part[:1] in "[(" and part[-1:] in "])" and "," in part:
                lo, hi = (float(v) for v in part[1:-1].split(","))
                if not lo <= hi:
                    raise ValueError(f"range {text!r}: {lo} > {hi}")
                parts.append((lo, hi, part[0] == "(", part[-1] == ")"))
            else:
                v = float(part)  # a single allowed value (a sentinel such as -1)
                parts.append((v, v, False, False))
        return cls(str(text), tuple(parts))

    def __contains__(self, value) -> bool:
        """Compared in float32, the precision the program runs at (0.01 is inside [0.01, 1]
        whether it arrives as a Python float or a float32)."""
        v, f = float(value), np.float32
        if math.isnan(v):
            return False
        return any(
            (f(lo) < f(v) if lo_open else f(lo) <= f(v))
            and (f(v) < f(hi) if hi_open else f(v) <= f(hi))
            for lo, hi, lo_open, hi_open in self.parts
        )

    def edges(self) -> list[float]:
        """The extreme values inside: each end, or just inside an open end (the tests run every
        method there)."""
        out = []
        for lo, hi, lo_open, hi_open in self.parts:
            for end, is_open, inward in ((lo, lo_open, 1.0), (hi, hi_open, -1.0)):
                if math.isinf(end):
                    continue
                if is_open:
                    width = hi - lo if math.isfinite(hi - lo) else max(abs(end), 1.0)
                    end = end + inward * width * 1e-3
                if end not in out:
                    out.append(end)
        return out


def check_range(where: str, name: str, value, rng: Range) -> None:
    """One clear line naming the value and the range."""
    if value not in rng:
        raise ConfigError(f"{where}: {name}={float(value):g} is outside its valid range {rng.text}")


def per_step(num_steps: int, options: dict) -> int:
    """NFE of a method with one network evaluation per respaced step."""
    del options
    return int(num_steps)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its factory and what it declares.

    hparams: traced hyperparameters and their defaults (None: no default; a factory may fill it,
    e.g. sigma from the noise model). nfe(num_steps, options) -> network evaluations per image.
    grad: whether a step differentiates through the network (a gradient costs about 2 forwards).
    bounds: traced hparam -> the static option that bounds it (SDEdit's t0 <= max_t0: the scan's
    length); a sweep or a tuned config sets the option to cover the values it runs.
    """

    name: str
    make: Callable
    needs: frozenset
    hparams: dict
    nfe: Callable[[int, dict], int]
    grad: bool = False
    doc: str = ""
    bounds: dict = dataclasses.field(default_factory=dict)
    ranges: dict = dataclasses.field(default_factory=dict)

    def check_hparams(self, values: dict, where: str | None = None) -> None:
        """Concrete hyperparameter values (scalars or sequences: a sweep's) against the declared
        names and ranges; a ConfigError naming the first bad one. None (a default the factory
        fills) passes."""
        where = where or self.name
        unknown = sorted(set(values) - set(self.hparams))
        if unknown:
            known = ", ".join(sorted(self.hparams)) or "none"
            raise ConfigError(f"{where}: unknown hyperparameter(s) {unknown}; known: {known}")
        for name, value in values.items():
            for v in _scalars(value):
                if v is not None:
                    check_range(where, name, v, self.ranges[name])

    def __call__(self, model_fn, schedule, *, operator=None, noise=None, **kwargs):
        check_operator(self, operator)
        check_latent(self.name, self.needs, kwargs.get("latent"), operator)
        if "latent_prior" not in self.needs:
            kwargs.pop("latent", None)
        check_image_size(self, model_fn, operator, kwargs.get("image_shape"))
        hparams = dict(self.hparams)
        for name in list(kwargs):
            if name in self.hparams:
                hparams[name] = kwargs.pop(name)
        loop = LoopOptions(
            **{f: kwargs.pop(f) for f in LoopOptions._fields if f in kwargs},
        )
        return self.make(
            model_fn,
            schedule,
            operator=operator,
            noise=noise,
            defaults=hparams,
            loop=loop,
            **kwargs,
        )

    def num_evaluations(self, num_steps: int, options: dict | None = None) -> int:
        return int(self.nfe(int(num_steps), dict(options or {})))


def _concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


def _scalars(value) -> list:
    if value is None:
        return [None]
    return [float(v) for v in np.ravel(np.asarray(value))] if _concrete(value) else []


def check_operator(spec: SamplerSpec, operator) -> None:
    """The declared needs against the operator given: a clear error naming both."""
    op_name = getattr(operator, "name", type(operator).__name__)
    if "operator" in spec.needs and operator is None:
        raise ValueError(f"{spec.name}: needs an operator (the forward model A)")
    if operator is None:
        return
    if "linear" in spec.needs and not getattr(operator, "linear", False):
        raise ValueError(f"{spec.name}: needs a linear operator; {op_name!r} is nonlinear")
    if "svd" in spec.needs and getattr(operator, "svd", None) is None:
        raise ValueError(
            f"{spec.name}: needs an operator in SVD form (operator.svd); {op_name!r} has none"
        )
    if "mask" in spec.needs and not getattr(operator, "pixel_mask", False):
        raise ValueError(
            f"{spec.name}: needs a pixel-mask operator (inpainting: inpaint, inpaint_box, "
            f"inpaint_random); {op_name!r} is not one"
        )


def check_image_size(spec: SamplerSpec, model_fn, operator, image_shape) -> None:
    """The network's own image size (`model_fn.image_size`, see jaxdiff.models.ModelFn) against
    the image the operator takes and `image_shape`: a 32 px prior must not sample at 256 px."""
    size = getattr(model_fn, "image_size", None)
    if size is None:
        return
    for what, shape in (
        ("image_shape", image_shape),
        (f"operator {getattr(operator, 'name', '')!r}", getattr(operator, "image_shape", None)),
    ):
        if shape is not None and tuple(int(s) for s in tuple(shape)[:2]) != (size, size):
            raise ValueError(
                f"{spec.name}: the model was built for {size}x{size} images, but {what} is "
                f"{tuple(int(s) for s in shape)}; build the operator at the model's size"
            )


def register_sampler(
    name: str,
    *,
    needs=(),
    hparams: dict | None = None,
    nfe: Callable[[int, dict], int] = per_step,
    grad: bool = False,
    bounds: dict | None = None,
    ranges: dict | None = None,
):
    """Register `make` under `name` with its declared needs, traced hparams (each with its
    valid range) and cost."""
    unknown = set(needs) - NEEDS
    if unknown:
        raise ValueError(
            f"sampler {name!r}: unknown needs {sorted(unknown)}; known {sorted(NEEDS)}"
        )
    ranges = {k: Range.parse(v) for k, v in (ranges or {}).items()}
    if set(ranges) != set(hparams or {}):
        raise ValueError(
            f"sampler {name!r}: declare the range of every traced hparam: hparams "
            f"{sorted(hparams or {})}, ranges {sorted(ranges)}"
        )

    def add(make):
        doc = getattr(sys.modules.get(make.__module__), "__doc__", None) or make.__doc__ or ""
        spec = SamplerSpec(
            name,
            make,
            frozenset(needs),
            dict(hparams or {}),
            nfe,
            grad,
            doc,
            dict(bounds or {}),
            ranges,
        )
        SAMPLERS.register(name)(spec)
        return make

    return add


def initial_x(key, replay, shape, dtype, where: str, name: str = "x_T"):
    """The chain's start: `replay[name]` when a recorded draw is replayed, else N(0, I) from the
    first half of `key`. Returns (x, key for the loop), so every sampler splits keys alike."""
    k_init, k_loop = jax.random.split(key)
    x = (replay or {}).get(name)
    if x is None:
        return jax.random.normal(k_init, shape, dtype), k_loop
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(
            f"{where}: replay {name} has shape {tuple(jnp.shape(x))}, expected {shape}"
        )
    return jnp.asarray(x, dtype), k_loop


def chain(step, x_init, steps, *, key, replay, loop: LoopOptions, label: str, **kw) -> SampleResult:
    """`run_chain` with the shared options; the replayed per-step draws are `replay["noise"]`
    (any pytree with a leading step axis, matching what `draw` returns; see loop.py)."""
    out = run_chain(
        step,
        x_init,
        steps,
        key=key,
        noise=(replay or {}).get("noise"),
        keep_trajectory=loop.keep_trajectory,
        snapshot_every=loop.snapshot_every,
        progress_every=loop.progress_every,
        label=label,
        **kw,
    )
    return SampleResult(out.x, out.diverged_at, out.snapshots, out.trajectory)
