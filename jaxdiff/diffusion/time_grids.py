"""Each method's time grid as its official code builds it, for any number of steps.

The grids differ where the step count does not divide the training length T: DDRM's
`range(0, T, T // N)` then has more than N steps (12 steps: 13, the first at t = 996), DDNM's
`get_schedule_jump` has exactly N (12 steps: t = 913, 830, ..., 0). A method's config names its
grid; a respacing spec "<grid><N>" ("ddnm12", "ddrm20", "pigdm100") is resolved here by
`jaxdiff.diffusion.space_timesteps`.

`TIME_GRIDS` maps a grid name to a `TimeGrid`: its official source and `build(num_steps,
num_train_timesteps, **options)`. Four kinds:
- "timesteps": the training steps the model is called at, ascending (a respacing);
- "noise_index": DiffPIR's `seq`, indices into the descending noise levels, mapped to steps by
  `jaxdiff.diffusion.diffpir_schedule`;
- "sigmas": DAPS's annealing noise levels (EDM poly-rho), then 0;
- "walk": RePaint's resampling walk, respaced steps up and down ending at -1 (not a respacing:
  the respacing is a separate spec, RePaint's "250").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxdiff.registry import Registry


@dataclasses.dataclass(frozen=True)
class TimeGrid:
    name: str
    kind: str  # "timesteps" | "noise_index" | "sigmas" | "walk"
    source: str  # the official file and function the grid reproduces
    build: Callable


TIME_GRIDS: Registry[TimeGrid] = Registry("time grid")


def register_grid(name: str, kind: str, source: str):
    def add(fn):
        TIME_GRIDS.register(name)(TimeGrid(name, kind, source, fn))
        return fn

    return add


def _check(num_steps, num_train_timesteps) -> tuple[int, int]:
    n, t = int(num_steps), int(num_train_timesteps)
    if n != num_steps or t != num_train_timesteps or not 1 <= n <= t:
        raise ValueError(f"time grid: need 1 <= num_steps <= {t}, got {num_steps!r}")
    return n, t


def schedule_jump(num_steps: int, travel_length: int = 1, travel_repeat: int = 1) -> list[int]:
    """DDNM's (RePaint's) `get_schedule_jump` in step units: N-1 .. 0, then -1, with
    `travel_repeat - 1` jumps of `travel_length` steps back up after every `travel_length`
    steps below N - travel_length."""
    n, length, repeat = int(num_steps), int(travel_length), int(travel_repeat)
    if n < 1 or length < 1 or repeat < 1:
        raise ValueError(f"schedule_jump: positive sizes needed, got {n}, {length}, {repeat}")
    jumps = {j: repeat - 1 for j in range(0, n - length, length)}
    t, walk = n, []
    while t >= 1:
        t -= 1
        walk.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(length):
                t += 1
                walk.append(t)
    return walk + [-1]


def ddnm_walk(
    num_steps: int, num_train_timesteps: int = 1000, travel_length: int = 1, travel_repeat: int = 1
) -> list[tuple[int, int]]:
    """The official loop's (t, t_next) pairs: `schedule_jump` times skip = T // N, the final
    -skip as -1; t_next > t is a time-travel step back up (no model call)."""
    n, t = _check(num_steps, num_train_timesteps)
    skip = t // n
    walk = schedule_jump(n, travel_length, travel_repeat)
    return [(i * skip, max(j * skip, -1)) for i, j in zip(walk[:-1], walk[1:])]


@register_grid("ddnm", "timesteps", "wyhuai/DDNM functions/svd_ddnm.py get_schedule_jump")
def ddnm(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """DDNM without time travel (travel_length = travel_repeat = 1, every official config):
    t = i * (T // N), i = N-1 .. 0: exactly N steps."""
    walk = ddnm_walk(num_steps, num_train_timesteps)
    return sorted(t for t, t_next in walk if t_next < t)


def uniform_skip(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """range(0, T, T // N): N steps, or more when N does not divide T."""
    n, t = _check(num_steps, num_train_timesteps)
    return list(range(0, t, t // n))


register_grid("ddrm", "timesteps", "bahjat-kawar/ddrm runners/diffusion.py sample_sequence")(
    uniform_skip
)
# RED-diff and PiGDM share utils/functions.py get_timesteps (start_step T, end_step 0)
register_grid("reddiff", "timesteps", "NVlabs/RED-diff utils/functions.py get_timesteps")(
    uniform_skip
)
register_grid("pigdm", "timesteps", "NVlabs/RED-diff utils/functions.py get_timesteps")(
    uniform_skip
)


@register_grid("mcgdiff", "timesteps", "gabrielvc/mcg_diff scripts/hugging_faces_models.py")
def mcgdiff(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """torch.linspace(0, T - 1, N).long(): torch's float32 linspace (start + i step in the first
    half, end - (N - 1 - i) step in the second), truncated; 0 and T - 1 both included."""
    n, t = _check(num_steps, num_train_timesteps)
    if n < 2:
        raise ValueError(f"mcgdiff: needs at least 2 grid points, got {num_steps!r}")
    f = np.float32
    end = f(t - 1)
    step = f(end / f(n - 1))
    vals = [f(step * f(i)) if i < n // 2 else f(end - step * f(n - 1 - i)) for i in range(n)]
    return sorted({int(v) for v in vals})


@register_grid(
    "ldm", "timesteps", "CompVis ldm/modules/diffusionmodules/util.py make_ddim_timesteps"
)
def ldm_uniform(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The latent-diffusion DDIM grid ('uniform'): range(0, T, T // N) + 1 (the SD / LDM codes of
    PSLD, ReSample, Latent-DAPS). At T // N == 1 the last step would be T; PSLD's
    make_ddim_sampling_parameters then indexes the alphas at t - 1, which is this grid (its UNet
    stays at t: `ldm_official`)."""
    n, t = _check(num_steps, num_train_timesteps)
    c = t // n
    steps = [s + 1 for s in range(0, t, c)]
    return [s - 1 for s in steps] if steps[-1] >= t else steps


def ldm_official(num_steps: int, num_train_timesteps: int = 1000) -> tuple[list[int], list[int]]:
    """What the CompVis DDIM sampler runs (PSLD's, for parity): (the alphas' indices, the UNet's
    timesteps). make_ddim_timesteps gives t = range(0, T, T // N) + 1 for the UNet; where the last
    t equals the count (stride 1, or N = 1), make_ddim_sampling_parameters reads the alphas at
    t - 1 and the UNet still gets t, one step off its tables. The "ldm" grid (the default) moves
    both to t - 1 at stride 1 and keeps both at t for N = 1."""
    n, t = _check(num_steps, num_train_timesteps)
    unet = [s + 1 for s in range(0, t, t // n)]
    alphas = [s - 1 for s in unet] if unet[-1] == len(unet) else unet
    if alphas[-1] >= t:
        raise ValueError(
            f"ldm_official: {n} steps end the official grid at t = {alphas[-1]}, past the "
            f"{t}-entry alphas (the CompVis code raises IndexError there)"
        )
    return alphas, unet


DIFFPIR_SKIP_TYPES = ("uniform", "quad")


@register_grid("diffpir", "noise_index", "yuanzhi-zhu/DiffPIR main_ddpir_*.py seq")
def diffpir(num_steps: int, num_train_timesteps: int = 1000, skip_type: str = "quad") -> list[int]:
    """`seq`: indices into the descending noise levels (0 = noisiest), as the scripts build it:
    quad sqrt(linspace(0, T^2, N)) truncated, the last minus 1; uniform i * (T // N), then T - 1
    when T // N > 1."""
    n, t = _check(num_steps, num_train_timesteps)
    if n < 2:
        raise ValueError(f"diffpir: iter_num must be in [2, {t}], got {num_steps!r}")
    if skip_type == "uniform":
        skip = t // n
        seq = [i * skip for i in range(n)]
        if skip > 1:
            seq.append(t - 1)
    elif skip_type == "quad":
        seq = [int(s) for s in np.sqrt(np.linspace(0, t**2, n))]
        seq[-1] = seq[-1] - 1
    else:
        raise ValueError(f"diffpir: unknown skip_type {skip_type!r}; known: {DIFFPIR_SKIP_TYPES}")
    if len(set(seq)) != len(seq):
        raise ValueError(f"diffpir: skip_type {skip_type!r} with {n} steps repeats a step: {seq}")
    return seq


@register_grid("daps", "sigmas", "zhangbingliang2019/DAPS cores/scheduler.py EDMScheduler")
def daps(
    num_steps: int, sigma_max: float = 100.0, sigma_min: float = 0.1, rho: float = 7.0, dtype=None
) -> np.ndarray:
    """The N annealing noise levels then 0 (`annealing.annealing_sigmas`)."""
    from jaxdiff.diffusion.annealing import annealing_sigmas

    return annealing_sigmas(num_steps, sigma_max, sigma_min, rho, dtype or np.float32)


def grid_timesteps(name: str, num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The ascending training steps of a "timesteps" grid (the respacing "<name><N>")."""
    grid = TIME_GRIDS.get(name)
    if grid.kind != "timesteps":
        raise ValueError(f"time grid {name!r} is a {grid.kind} grid, not a respacing")
    return list(grid.build(num_steps, num_train_timesteps))


@register_grid(
    "repaint", "walk", "andreas128/RePaint guided_diffusion/scheduler.py get_schedule_jump"
)
def repaint_walk(
    t_T: int,
    n_sample: int = 1,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    jump2_length: int = 1,
    jump2_n_sample: int = 1,
    jump3_length: int = 1,
    jump3_n_sample: int = 1,
    start_resampling: int = 100000000,
) -> list[int]:
    """RePaint's resampling walk over respaced steps, line for line: t_T-1 .. 0 then -1, going
    back up `jump_length` steps `jump_n_sample - 1` times at every multiple of `jump_length`
    (nested jumps 2 and 3 reset by the outer ones; `n_sample` up-down repeats of one step).
    A pair (t, t - 1) is a model step at t, (t, t + 1) a forward re-noising step."""
    sizes = (t_T, n_sample, jump_length, jump_n_sample, jump2_length, jump2_n_sample,
             jump3_length, jump3_n_sample)  # fmt: skip
    if any(int(v) != v or v < 1 for v in sizes):
        raise ValueError(f"repaint walk: positive integer sizes needed, got {sizes}")
    t_T = int(t_T)

    def fresh(length, n):
        return {j: n - 1 for j in range(0, t_T - length, length)}

    jumps = fresh(jump_length, jump_n_sample)
    jumps2 = fresh(jump2_length, jump2_n_sample)
    jumps3 = fresh(jump3_length, jump3_n_sample)
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if t + 1 < t_T - 1 and t <= start_resampling:
            for _ in range(n_sample - 1):
                t += 1
                ts.append(t)
                if t >= 0:
                    t -= 1
                    ts.append(t)
        if jumps3.get(t, 0) > 0 and t <= start_resampling - jump3_length:
            jumps3[t] -= 1
            for _ in range(jump3_length):
                t += 1
                ts.append(t)
        if jumps2.get(t, 0) > 0 and t <= start_resampling - jump2_length:
            jumps2[t] -= 1
            for _ in range(jump2_length):
                t += 1
                ts.append(t)
            jumps3 = fresh(jump3_length, jump3_n_sample)
        if jumps.get(t, 0) > 0 and t <= start_resampling - jump_length:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
            jumps2 = fresh(jump2_length, jump2_n_sample)
            jumps3 = fresh(jump3_length, jump3_n_sample)
    ts.append(-1)
    # the official _check_times: starts descending, ends at -1, steps of one, within [-1, t_T]
    if len(ts) < 2 or ts[0] <= ts[1] or any(abs(a - b) != 1 for a, b in zip(ts[:-1], ts[1:])):
        raise ValueError(f"repaint walk: not a walk of unit steps from {t_T - 1} to -1")
    if min(ts) < -1 or max(ts) > t_T:
        raise ValueError(f"repaint walk: leaves [-1, {t_T}]")
    return ts
