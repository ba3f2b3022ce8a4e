"""Beta schedules, alpha-bar and timestep respacing: numbers only (guided-diffusion's
gaussian_diffusion.py and respace.py).

Every table is float64 numpy, as in guided-diffusion; samplers cast the entry they gather to the
compute dtype (float32 normally), which is what the reference's `_extract_into_tensor(...).float()`
does. diffusers builds its schedule in float32 (`schedule_dtype="float32"`); that is reproduced by
computing the betas in float32 and the cumulative product with a double accumulator over float32
alphas (torch's CPU cumprod), then widening to float64 for the derived tables.
"""

from __future__ import annotations

import math
import re

import numpy as np

from jaxdiff.diffusion.time_grids import TIME_GRIDS, grid_timesteps

BETA_SCHEDULES = ("linear", "cosine")


def get_betas(
    beta_schedule: str,
    num_timesteps: int,
    beta_start: float | None = None,
    beta_end: float | None = None,
    schedule_dtype: str = "float64",
) -> np.ndarray:
    """Training betas, float64 (values rounded to float32 first when `schedule_dtype="float32"`).

    `linear` without explicit `beta_start`/`beta_end` follows ADM's rule
    `linspace(1000/T * 1e-4, 1000/T * 0.02, T)`; explicit values are used literally (diffusers).
    """
    num_timesteps = _positive_int(num_timesteps, "num_timesteps")
    if schedule_dtype not in ("float64", "float32"):
        raise ValueError(f"schedule_dtype must be 'float64' or 'float32', got {schedule_dtype!r}")
    if beta_schedule == "linear":
        scale = 1000.0 / num_timesteps
        start = scale * 1e-4 if beta_start is None else float(beta_start)
        end = scale * 0.02 if beta_end is None else float(beta_end)
        if not 0.0 < start <= end < 1.0:
            raise ValueError(
                f"linear schedule needs 0 < beta_start <= beta_end < 1, got {start}, {end}"
            )
        dtype = np.float32 if schedule_dtype == "float32" else np.float64
        betas = np.linspace(start, end, num_timesteps, dtype=dtype)
    elif beta_schedule == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError("the cosine schedule takes no beta_start/beta_end")

        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        t = num_timesteps
        betas = np.array([min(1 - abar((i + 1) / t) / abar(i / t), 0.999) for i in range(t)])
        if schedule_dtype == "float32":
            betas = betas.astype(np.float32)
    else:
        raise ValueError(
            f"unknown beta_schedule {beta_schedule!r}; known: {', '.join(BETA_SCHEDULES)}"
        )
    return np.asarray(betas, dtype=np.float64)


def alphas_cumprod_from_betas(betas, schedule_dtype: str = "float64") -> np.ndarray:
    """prod_{s<=t}(1 - beta_s) as float64; float32 schedules round alphas and products to f32."""
    betas = np.asarray(betas, dtype=np.float64)
    if schedule_dtype == "float32":
        alphas = (np.float32(1.0) - betas.astype(np.float32)).astype(np.float64)
        return np.cumprod(alphas).astype(np.float32).astype(np.float64)
    return np.cumprod(1.0 - betas)


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """Kept original timesteps, ascending, for a respacing spec (guided-diffusion respace.py).

    Accepts an int or a string of comma-separated section counts ("250", "10,10,10"), "ddimN"
    (the smallest integer stride giving exactly N steps), "skipN" (range(0, T, T // N): the
    uniform skip of the DDIM, DDRM, DDNM, PiGDM and RED-diff codes, N+1 steps when N does not
    divide T), diffusers' spacings "leadingN" / "trailingN" (DDPMScheduler.set_timesteps
    with steps_offset=0) and a method's official grid "<grid>N" (`time_grids.TIME_GRIDS`:
    "ddnm12", "ddrm20", "pigdm100", "reddiff1000"). None or "" keeps every step; a list (or
    array) of increasing timesteps in [0, T) is kept as given.
    """
    t = _positive_int(num_timesteps, "num_timesteps")
    if section_counts is None or section_counts == "":
        return list(range(t))
    spec = section_counts
    if isinstance(spec, (list, tuple, np.ndarray)):
        kept = [int(s) for s in spec]
        increasing = all(b > a for a, b in zip(kept, kept[1:]))
        if not kept or not increasing or not 0 <= kept[0] <= kept[-1] < t:
            raise ValueError(f"respacing {list(spec)!r}: timesteps must increase inside [0, {t})")
        return kept
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        counts = [int(spec)]
    elif isinstance(spec, str):
        spec = spec.strip()
        m = re.fullmatch(r"(ddim|skip|leading|trailing)(\d+)", spec)
        if m:
            return _named_spacing(m.group(1), t, int(m.group(2)), section_counts)
        m = re.fullmatch(r"([a-z_]+?)(\d+)", spec)
        if m and m.group(1) in TIME_GRIDS:
            return grid_timesteps(m.group(1), int(m.group(2)), t)
        try:
            counts = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"respacing {section_counts!r}: expected an int, comma-separated section counts "
                "('250', '10,10,10'), 'ddimN', 'skipN', 'leadingN', 'trailingN' or a method's "
                f"grid '<name>N' ({', '.join(TIME_GRIDS.names())})"
            ) from None
    else:
        raise ValueError(f"respacing must be an int or a string, got {section_counts!r}")
    if not counts or min(counts) < 1:
        raise ValueError(f"respacing {section_counts!r}: section counts must be positive")
    if len(counts) > t:
        raise ValueError(f"respacing {section_counts!r}: {len(counts)} sections for {t} steps")
    size_per, extra = divmod(t, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"respacing {section_counts!r}: cannot take {count} steps from a section of {size} "
                f"(num_timesteps={t})"
            )
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            kept.append(start + round(cur))
            cur += frac_stride
        start += size
    return sorted(set(kept))


def _named_spacing(kind: str, t: int, n: int, spec) -> list[int]:
    if n < 1 or n > t:
        raise ValueError(f"respacing {spec!r}: need 1 <= N <= num_timesteps={t}")
    if kind == "ddim":
        for stride in range(1, t):
            if len(range(0, t, stride)) == n:
                return list(range(0, t, stride))
        if n == 1:
            return [0]
        raise ValueError(f"respacing {spec!r}: no integer stride gives exactly {n} of {t} steps")
    ratio = t // n
    if kind == "skip":
        return list(range(0, t, ratio))
    if kind == "leading":
        return [int(v) for v in np.arange(n) * ratio]
    # trailing: round(arange(T, 0, -T/N)) - 1, reversed to ascending.
    return sorted(int(v) for v in np.round(np.arange(t, 0, -t / n)).astype(np.int64) - 1)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Schedule:
    """A (possibly respaced) diffusion chain: the tables a sampler gathers per step.

    Step `k = 0..num_steps-1` is the respaced index; the model is called with the original
    training index `timestep_map[k]` (guided-diffusion's `rescale_timesteps=False`). Tables are
    float64 numpy; `gather(k, dtype)` casts them to the compute dtype and indexes with a (traced) k.

    `convention` only matters where the two reference codes differ (guided-diffusion's
    p_mean_variance, diffusers' DDPMScheduler):
    "guided_diffusion" uses the clipped posterior log-variance; "diffusers" clamps the posterior
    variance at 1e-20 instead, and its fixed_large uses the current beta at every step.

    `model_timestep_map` (default: `timestep_map`) is the time the network is given at each step
    where a reference code gives it another than the tables' index (`with_model_timesteps`).
    """

    VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
    CONVENTIONS = ("guided_diffusion", "diffusers")

    def __init__(
        self,
        alphas_cumprod,
        timestep_map,
        num_train_timesteps: int,
        variance_type: str = "fixed_small",
        convention: str = "guided_diffusion",
        train_alphas_cumprod=None,
        model_timestep_map=None,
    ):
        from jaxdiff.diffusion.gaussian import posterior_tables

        if variance_type not in self.VARIANCE_TYPES:
            raise ValueError(
                f"unknown variance_type {variance_type!r}; known: {', '.join(self.VARIANCE_TYPES)}"
            )
        if convention not in self.CONVENTIONS:
            raise ValueError(
                f"unknown convention {convention!r}; known: {', '.join(self.CONVENTIONS)}"
            )
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        tmap = np.asarray(timestep_map, dtype=np.int64)
        if abar.ndim != 1 or abar.shape != tmap.shape or abar.size == 0:
            raise ValueError(
                f"alphas_cumprod {abar.shape} and timestep_map {tmap.shape} must be 1-D, equal"
            )
        if not (np.all(abar > 0) and np.all(abar < 1) and np.all(np.diff(abar) < 0)):
            raise ValueError("alphas_cumprod must be strictly decreasing inside (0, 1)")
        if np.any(np.diff(tmap) <= 0) or tmap[0] < 0 or tmap[-1] >= num_train_timesteps:
            raise ValueError(f"timestep_map must be increasing in [0, {num_train_timesteps})")
        model_map = tmap if model_timestep_map is None else np.asarray(model_timestep_map, np.int64)
        if model_map.shape != tmap.shape or np.any(np.diff(model_map) <= 0) or model_map[0] < 0:
            raise ValueError(
                f"model_timestep_map {model_map.shape} must be increasing, >= 0, one per step"
            )
        self.alphas_cumprod = abar
        self.timestep_map = tmap
        self.model_timestep_map = model_map
        self.num_train_timesteps = int(num_train_timesteps)
        self.variance_type = variance_type
        self.convention = convention
        self.train_alphas_cumprod = (
            abar if train_alphas_cumprod is None else np.asarray(train_alphas_cumprod, np.float64)
        )
        self.tables = posterior_tables(abar, convention)
        self.betas = self.tables["betas"]

    @property
    def num_steps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def learned_variance(self) -> bool:
        return self.variance_type in ("learned_range", "learned")

    def gather(self, k, dtype) -> dict:
        """Every table's entry at respaced step `k` (int, possibly traced), cast to `dtype`."""
        import jax
        import jax.numpy as jnp

        dtype = jax.dtypes.canonicalize_dtype(dtype)
        out = {name: jnp.asarray(table.astype(dtype))[k] for name, table in self.tables.items()}
        out["timestep"] = jnp.asarray(self.model_timestep_map, dtype=jnp.int32)[k]
        return out

    def with_variance_type(self, variance_type: str) -> Schedule:
        return Schedule(
            self.alphas_cumprod,
            self.timestep_map,
            self.num_train_timesteps,
            variance_type,
            self.convention,
            self.train_alphas_cumprod,
            self.model_timestep_map,
        )

    def with_model_timesteps(self, model_timestep_map) -> Schedule:
        """The same tables, the network given `model_timestep_map[k]` at step k."""
        return Schedule(
            self.alphas_cumprod,
            self.timestep_map,
            self.num_train_timesteps,
            self.variance_type,
            self.convention,
            self.train_alphas_cumprod,
            model_timestep_map,
        )

    def __repr__(self) -> str:
        return (
            f"Schedule(num_steps={self.num_steps}, num_train_timesteps={self.num_train_timesteps}, "
            f"variance_type={self.variance_type!r}, convention={self.convention!r})"
        )


def respace(
    train_alphas_cumprod,
    respacing=None,
    variance_type: str = "fixed_small",
    convention: str = "guided_diffusion",
) -> Schedule:
    """Keep the timesteps of `respacing` (see `space_timesteps`) and recompute the betas.

    guided-diffusion semantics: `beta'_k = 1 - abar[t_k] / abar[t_{k-1}]` (abar before the first
    kept step = 1), so the respaced alpha-bar equals the original at every kept step. guided-
    diffusion then recomputes alpha-bar as the float64 cumprod of the new alphas; diffusers reads
    its (float32) alpha-bar table directly. Both are reproduced.
    """
    abar = np.asarray(train_alphas_cumprod, dtype=np.float64)
    t = int(abar.shape[0])
    kept = np.asarray(space_timesteps(t, respacing), dtype=np.int64)
    abar_kept = abar[kept]
    if convention == "guided_diffusion":
        prev = np.concatenate([[1.0], abar_kept[:-1]])
        abar_kept = np.cumprod(1.0 - (1.0 - abar_kept / prev))
    return Schedule(abar_kept, kept, t, variance_type, convention, abar)


def make_schedule(
    num_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float | None = None,
    beta_end: float | None = None,
    variance_type: str = "fixed_small",
    respacing=None,
    schedule_dtype: str = "float64",
    convention: str | None = None,
    betas=None,
    alphas_cumprod=None,
) -> Schedule:
    """The training schedule, respaced. `betas` / `alphas_cumprod` override the named schedule
    (e.g. tables read from a fixture); `convention` defaults to "diffusers" for float32 ones."""
    if convention is None:
        convention = "diffusers" if schedule_dtype == "float32" else "guided_diffusion"
    if alphas_cumprod is not None:
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
    else:
        if betas is None:
            betas = get_betas(beta_schedule, num_timesteps, beta_start, beta_end, schedule_dtype)
        abar = alphas_cumprod_from_betas(betas, schedule_dtype)
    return respace(abar, respacing, variance_type, convention)


def schedule_from_meta(diffusion: dict, respacing=None, variance_type: str | None = None):
    """The schedule a checkpoint was trained with (`meta["diffusion"]`, DESIGN.md), respaced.

    Reads num_timesteps, beta_schedule, beta_start/end, variance_type, schedule_dtype and the
    converter's trained_betas; only epsilon prediction is supported (a clear error otherwise).
    """
    if not isinstance(diffusion, dict):
        raise ValueError(f"meta['diffusion'] must be a dict, got {type(diffusion).__name__}")
    prediction = diffusion.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(
            f"meta['diffusion']['prediction_type'] is {prediction!r}: the samplers take "
            "epsilon-prediction models only"
        )
    known = (
        "num_timesteps",
        "beta_schedule",
        "beta_start",
        "beta_end",
        "variance_type",
        "schedule_dtype",
        "convention",
    )
    cfg = {k: diffusion[k] for k in known if diffusion.get(k) is not None}
    if diffusion.get("trained_betas") is not None:
        cfg["betas"] = np.asarray(diffusion["trained_betas"], np.float64)
    if variance_type is not None:
        cfg["variance_type"] = variance_type
    return make_schedule(respacing=respacing, **cfg)
