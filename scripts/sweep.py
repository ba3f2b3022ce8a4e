"""Sweep one traced hyperparameter: every value over every image in ONE compiled call.

    python -m scripts.sweep --config=configs/dps.py:box --sweep=scale:0.1,0.3,1,3 --workdir=OUT
    python -m scripts.sweep --config=configs/score_ald.py:box --sweep=weight:0.3,1,3 ...
    python -m scripts.sweep --config=configs/sdedit.py:gaussian_blur --sweep=t0:0.2,0.4,0.6 ...
    python -m scripts.sweep --config=configs/dps.py:sr4 --sweep=noise_sigma:0.01,0.05,0.1 ...

Writes into --workdir: sweep.md / sweep.csv / sweep.json (mean and std of each metric per value,
the best value by --metric), sweep.png (metric vs value, best marked), sweep_grid.png (the
reconstructions side by side), results.jsonl (one line per value and image) and
images/NAME_VALUE.png. See jaxdiff/sweep.py. Several processes: as scripts.reproduce
(--distributed, or --coordinator / --num_processes / --process_id).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxdiff import cli, sweep
from jaxdiff.metrics.per_image import METRICS

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/dps.py:box")
_SWEEP = flags.DEFINE_string("sweep", None, "NAME:V1,V2,... e.g. scale:0.1,0.3,1,3")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
_METRIC = flags.DEFINE_enum("metric", "lpips", list(METRICS), "the metric that picks the best")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")
cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def main(argv):
    cli.no_positional_args(argv)
    cli.initialize_distributed()
    name, values = sweep.parse_sweep(_SWEEP.value)
    r = sweep.run_sweep(
        _CONFIG.value, _WORKDIR.value, name, values, metric=_METRIC.value, progress=_PROGRESS.value
    )
    if not cli.is_lead():
        return
    print(sweep.markdown(r))
    print(f"wrote {_WORKDIR.value}/sweep.md, sweep.csv, sweep.json, sweep.png, sweep_grid.png")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
