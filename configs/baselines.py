"""Classical baselines through the same driver: `configs/baselines.py:NAME,TASK` or `:TASK`.

    python -m scripts.reproduce --config=configs/baselines.py:wiener,gaussian_blur --workdir=...
    python -m scripts.reproduce --config=configs/baselines.py:box --workdir=...   # the default one

NAME is a jaxdiff.baselines name (zero_fill, adjoint, least_squares, tv_least_squares, bicubic,
wiener, telea, navier_stokes) or "measurement" (the measurement itself: the floor); which apply
to which task is jaxdiff.baselines.APPLIES. `baseline=NAME,task=TASK` spells the same. Settings are
the baselines' defaults; keyword arguments go in `config.baseline`, e.g.
`--config.baseline.lam=0.05` for TV. The DPS paper's ADMM-TV / PnP-ADMM (scico, 9.3) are not here.
"""

from __future__ import annotations

import inspect

import ml_collections

from jaxdiff import config_lib
from jaxdiff.baselines import APPLIES, BASELINES

# The classical method of each task, used when only a task is given.
DEFAULT = {
    "box": "telea",
    "random": "telea",
    "gaussian_blur": "wiener",
    "motion_blur": "wiener",
    "sr4": "bicubic",
    "sr2": "bicubic",
    "denoise": "tv_least_squares",
    "colorize": "least_squares",
    "phase_retrieval": "measurement",
}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg,
        __file__,
        baseline=config_lib.Choice(None, tuple(APPLIES)),
        task=config_lib.task_choice(),
    )
    c = config_lib.base_config(a.task)
    c.method = a.baseline or DEFAULT[a.task]
    c.sampler.respacing = ""
    c.baseline = ml_collections.ConfigDict(baseline_defaults(c.method))
    return c


def baseline_defaults(name: str) -> dict:
    """The baseline's keyword defaults (so `--config.baseline.KEY=...` can override them);
    noise_sigma is left out: it follows the task's sigma."""
    if name == "measurement":
        return {}
    out = {}
    for p in inspect.signature(BASELINES.get(name)).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name != "noise_sigma":
            if isinstance(p.default, (bool, int, float, str)):
                out[p.name] = p.default
    return out
