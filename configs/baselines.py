"""Classical baselines through the same driver: `configs/baselines.py:NAME,TASK` or `:TASK`.

    python -m scripts.reproduce --config=configs/baselines.py:wiener,gaussian_blur --workdir=...
    python -m scripts.reproduce --config=configs/baselines.py:box --workdir=...   # the default one

NAME is a jaxdiff.baselines name (zero_fill, adjoint, least_squares, tv_least_squares, bicubic,
wiener, telea, navier_stokes) or "measurement" (the measurement itself: the floor). Settings are
the baselines' defaults; keyword arguments go in `config.baseline`, e.g.
`--config.baseline.lam=0.05` for TV. The DPS paper's ADMM-TV / PnP-ADMM (scico, 9.3) are not here.
"""

from __future__ import annotations

import ml_collections

from configs import default, tasks

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
# Which baselines make sense for which task (the table leaves the others empty, like the paper's).
APPLIES = {
    "measurement": tuple(tasks.TASKS),
    "zero_fill": ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "denoise"),
    "adjoint": (
        "box",
        "random",
        "gaussian_blur",
        "motion_blur",
        "sr4",
        "sr2",
        "denoise",
        "colorize",
    ),
    "least_squares": ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "colorize"),
    "tv_least_squares": ("box", "random", "gaussian_blur", "motion_blur", "sr4", "sr2", "denoise"),
    "bicubic": ("sr4", "sr2"),
    "wiener": ("gaussian_blur", "motion_blur"),
    "telea": ("box", "random"),
    "navier_stokes": ("box", "random"),
}


def get_config(arg: str | None = None):
    parts = [p.strip() for p in (arg or "box").split(",") if p.strip()]
    if len(parts) == 1:
        task = parts[0]
        name = DEFAULT[task] if task in DEFAULT else None
    elif len(parts) == 2:
        name, task = parts
    else:
        raise ValueError(f"configs/baselines.py: expected NAME,TASK or TASK, got {arg!r}")
    c = default.get_config(task)
    if name is None:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(DEFAULT)}")
    if name not in APPLIES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(APPLIES)}")
    c.method = name
    c.sampler.respacing = ""
    c.baseline = ml_collections.ConfigDict(baseline_defaults(name))
    return c


def baseline_defaults(name: str) -> dict:
    """The baseline's keyword defaults (so `--config.baseline.KEY=...` can override them);
    noise_sigma is left out: it follows the task's sigma."""
    if name == "measurement":
        return {}
    import inspect

    from jaxdiff.baselines import BASELINES

    out = {}
    for p in inspect.signature(BASELINES.get(name)).parameters.values():
        if p.kind is p.KEYWORD_ONLY and p.name != "noise_sigma":
            if isinstance(p.default, (bool, int, float, str)):
                out[p.name] = p.default
    return out
