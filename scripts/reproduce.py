"""Run one method on one task over a folder of images; resumable.

    python -m scripts.reproduce --config=configs/dps.py:box --workdir=runs/dps_box \
        [--config.model=CONVERTED_DIR] [--config.data=IMAGE_FOLDER] [--config.num_images=100] \
        [--config.sampler.respacing=100] [--config.sampler.hparams.scale=1.0]

Writes into --workdir: results.jsonl (one line per image), images/NAME_{truth,measurement,
recon}.png, summary.json / summary.md (mean and std per metric, seconds per image, the full
config), figure.png (ground truth | measurement | reconstruction). Restarting with the same
workdir skips the finished images. See jaxdiff/runs.py.

Several processes (GPU hosts, a TPU pod slice, local CPU processes): start the same command in
every process with --distributed (auto-detected on Cloud TPU, SLURM and Open MPI) or with
--coordinator=HOST:PORT --num_processes=N --process_id=I; each process runs its share of the
images on its devices and the first writes the results. The processes agree on the config, the
model and the image listing before the first image, or all stop naming the difference; every
wait between them is bounded by --distributed_timeout (seconds).

Exit status: 0 done; 2 a bad config or input (one line naming it; --debug for the traceback),
nothing written; 3 done, but some images diverged (named on stdout, kept out of the means).
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from jaxdiff import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "method config and task preset, e.g. configs/dps.py:box; its model is the bundled demo "
    "prior and its data the demo photos unless --config.model=DIR / --config.data=FOLDER",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (re-use it to resume)")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")
cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])

EXIT_DIVERGED = 3


def main(argv):
    cli.no_positional_args(argv)
    cli.initialize_distributed()
    from jaxdiff import runs
    from jaxdiff import summary as summaries

    summary = runs.run(_CONFIG.value, _WORKDIR.value, progress=_PROGRESS.value)
    if not cli.is_lead():
        return
    print(f"{summaries.headline(summary)}; results in {_WORKDIR.value}/summary.md")
    if summary["diverged"]:
        print(
            f"{len(summary['diverged'])} of {summary['num_images']} images diverged (NaN/Inf; "
            f"frozen, excluded from the means above): {', '.join(summary['diverged'])}"
        )
        sys.exit(EXIT_DIVERGED)


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
