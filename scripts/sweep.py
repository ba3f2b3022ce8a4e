"""Sweep traced hyperparameters: every value over every image in ONE compiled call.

    python -m scripts.sweep --config=configs/dps.py:box --sweep=scale:0.1,0.3,1,3 --workdir=OUT
    python -m scripts.sweep --config=configs/ddrm.py:box --sweep=eta:0.5,0.85,1 \
        --sweep=eta_b:0.5,1 --workdir=OUT            (a grid: every pair, still one compile)
    python -m scripts.sweep --config=configs/score_ald.py:box --sweep=weight:0.3,1,3 ...
    python -m scripts.sweep --config=configs/sdedit.py:gaussian_blur --sweep=t0:0.2,0.4,0.6 ...
    python -m scripts.sweep --config=configs/dps.py:sr4 --sweep=noise_sigma:0.01,0.05,0.1 ...

Names and values are checked before anything compiles (traced hyperparameters only, each value
inside the method's declared range, finite, given once). Writes into --workdir: results.jsonl
(one line per finished image, every point's metrics; written per batch, so a rerun with the same
--workdir resumes), sweep.md / sweep.csv / sweep.json (mean and std of each metric per point over
the images that stayed finite, diverged images counted, the best point by --metric, flagged when
at the edge of the swept range), sweep.png, sweep_grid.png and images/NAME_LABEL.png. See
jaxdiff/sweep.py. Several processes: as scripts.reproduce
(--distributed, or --coordinator / --num_processes / --process_id).
"""

from __future__ import annotations

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxdiff import cli, sweep
from jaxdiff.metrics.per_image import METRICS

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/dps.py:box")
_SWEEP = flags.DEFINE_multi_string(
    "sweep", None, "NAME:V1,V2,... e.g. scale:0.1,0.3,1,3; repeat for a grid over their product"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
_METRIC = flags.DEFINE_enum("metric", "lpips", list(METRICS), "the metric that picks the best")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")
cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def main(argv):
    cli.no_positional_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    cli.initialize_distributed()
    axes = sweep.parse_sweeps(_SWEEP.value)
    r = sweep.run_sweep(
        _CONFIG.value, _WORKDIR.value, axes, metric=_METRIC.value, progress=_PROGRESS.value
    )
    if not cli.is_lead():
        return
    print(sweep.markdown(r))
    print(f"wrote {_WORKDIR.value}/sweep.md, sweep.csv, sweep.json, sweep.png, sweep_grid.png")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
