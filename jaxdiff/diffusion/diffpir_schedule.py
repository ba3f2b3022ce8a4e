"""DiffPIR's time grid and tables (Zhu et al. 2023; yuanzhi-zhu/DiffPIR main_ddpir_*.py).

The official scripts do not respace a guided-diffusion schedule: they build their own table from
float32 betas, walk a grid of noise levels `sigmas[i] = reduced[T-1-i]` with `seq` ('uniform' or
'quad' skip), and map each level back to a training step with `find_nearest`:

    betas = float32(linspace(1e-4, 0.02, T)); abar = float32 cumprod(1 - betas)
    sqrt_ac = sqrt(abar); sqrt_1m = sqrt(1 - abar); reduced = sqrt_1m / sqrt_ac    (sigma_bar_t)
    quad:    seq = [int(s) for s in sqrt(linspace(0, T^2, N))]; seq[-1] -= 1      (N steps)
    uniform: seq = [i * (T // N) for i < N] + [T - 1]   (the last only when T // N > 1)
    t_i = find_nearest(reduced, reduced[T-1-seq[i]]) = T-1-seq[i];  t_im1 = t_{i+1}

Numbers only (numpy): the sampler (jaxdiff/samplers/diffpir.py) gathers `DiffPIRGrid.per_step`
rows with a traced step index. docs/methods.md has the whole method.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdiff.diffusion.time_grids import DIFFPIR_SKIP_TYPES
from jaxdiff.diffusion.time_grids import diffpir as diffpir_seq

SKIP_TYPES = DIFFPIR_SKIP_TYPES


def time_grid(num_train_timesteps: int, iter_num: int, skip_type: str = "quad") -> list[int]:
    """`seq`: indices into the descending noise levels (0 = noisiest); the registered grid
    `time_grids.diffpir`."""
    return diffpir_seq(iter_num, num_train_timesteps, skip_type)


def find_nearest(table, value) -> int:
    """utils_model.find_nearest: argmin |table - value| (first index on ties)."""
    return int(np.argmin(np.abs(np.asarray(table) - value)))


def script_tables(train_alphas_cumprod, dtype="float32") -> dict:
    """The scripts' tables from a training schedule: its betas rounded to float32 (the scripts'
    np.linspace(..., dtype=float32)), then cumprod / sqrt / ratio in `dtype` (float32 = the
    official arithmetic: numpy's float32 running product, correctly rounded sqrt and division).

    Also `inv_sigma_k2` = 1 / reduced^2: the official rho_t is torch's python_float / tensor =
    reciprocal(tensor) * scalar, so rho_t = inv_sigma_k2[t] * (lambda * sigma^2) reproduces it.
    """
    abar64 = np.asarray(train_alphas_cumprod, np.float64)
    betas64 = 1.0 - abar64 / np.concatenate([[1.0], abar64[:-1]])
    dt = np.dtype(dtype)
    betas = betas64.astype(np.float32).astype(dt)
    alphas = (dt.type(1.0) - betas).astype(dt)
    abar = np.cumprod(alphas, dtype=dt)
    sqrt_ac = np.sqrt(abar)
    sqrt_1m = np.sqrt(dt.type(1.0) - abar)
    reduced = (sqrt_1m / sqrt_ac).astype(dt)
    inv_sigma_k2 = (dt.type(1.0) / (reduced * reduced)).astype(dt)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "sqrt_alphas_cumprod": sqrt_ac,
        "sqrt_1m_alphas_cumprod": sqrt_1m,
        "reduced_alpha_cumprod": reduced,
        "inv_sigma_k2": inv_sigma_k2,
    }


@dataclasses.dataclass(frozen=True)
class DiffPIRGrid:
    """The sampling grid: `seq`, the training steps `t_i` / `t_im1` and per-step table rows.

    per_step[name] has one entry per sampling step i (t_im1 of the last step is -1; its rows
    repeat t_i and are never used: the last step neither projects nor updates).
    """

    seq: np.ndarray
    t_i: np.ndarray
    t_im1: np.ndarray
    tables: dict
    per_step: dict

    @property
    def num_steps(self) -> int:
        return int(self.t_i.shape[0])


def make_grid(
    train_alphas_cumprod,
    iter_num: int,
    skip_type: str = "quad",
    t_start: int | None = None,
    dtype="float32",
) -> DiffPIRGrid:
    """The official grid: `t_start` (default T - 1, what the scripts overwrite it to) drops the
    levels whose step lies above it, as the scripts' `if t_i > t_start: continue`."""
    tables = script_tables(train_alphas_cumprod, dtype)
    reduced = tables["reduced_alpha_cumprod"]
    t = reduced.shape[0]
    t_start = t - 1 if t_start is None else int(t_start)
    seq = time_grid(t, iter_num, skip_type)
    sigmas = reduced[::-1]
    all_t = [find_nearest(reduced, sigmas[s]) for s in seq]
    keep = [i for i, ti in enumerate(all_t) if ti <= t_start]
    seq = [seq[i] for i in keep]
    t_i = np.asarray([all_t[i] for i in keep], np.int64)
    if t_i.size < 2:
        raise ValueError(f"diffpir: t_start={t_start} leaves fewer than 2 steps of {all_t}")
    t_im1 = np.concatenate([t_i[1:], [-1]]).astype(np.int64)
    nxt = np.where(t_im1 >= 0, t_im1, t_i)
    per_step = {
        "t": t_i,
        "sqrt_ac": tables["sqrt_alphas_cumprod"][t_i],
        "sqrt_1m": tables["sqrt_1m_alphas_cumprod"][t_i],
        "sqrt_ac_next": tables["sqrt_alphas_cumprod"][nxt],
        "sqrt_1m_next": tables["sqrt_1m_alphas_cumprod"][nxt],
        "sqrt_beta": np.sqrt(tables["betas"][t_i]),
        "inv_sigma_k2": tables["inv_sigma_k2"][t_i],
        "last": (t_im1 < 0),
    }
    return DiffPIRGrid(np.asarray(seq, np.int64), t_i, t_im1, tables, per_step)
