"""Collect run folders into one methods x tasks table, the form of the DPS paper's tables.

    python -m scripts.table runs/dps_box runs/telea_box ... [--out=runs/table]
    python -m scripts.table runs/demo            # a folder of run folders works too

    python -m scripts.table runs/paper --tensorboard=runs/tb   # + TensorBoard, one run each

Writes into --out (default: the runs' common parent): table.md (cells "PSNR / SSIM / LPIPS",
mean over images; one column per distinct task setting), table.csv (one row per method, task
and metric: mean, std, n, seconds per image, run folder), table.png (one heat-map panel per
metric) and grid_TASK.png (ground truth, then each method's own measurement and reconstruction);
and results.csv (one row per image) beside each run's results.jsonl. See jaxdiff/report.py.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from jaxdiff import cli, report

_OUT = flags.DEFINE_string("out", None, "output folder (default: the runs' common parent)")
_GRID_IMAGES = flags.DEFINE_integer(
    "grid_images", 4, "images per task in grid_TASK.png (0: no grids)", lower_bound=0
)
_TENSORBOARD = flags.DEFINE_string(
    "tensorboard", None, "also log each run's metrics and images here (DIR/RUN_NAME)"
)


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("give one or more run folders")
    written = report.make_table(argv[1:], _OUT.value, _GRID_IMAGES.value)
    print(pathlib.Path(written["md"]).read_text())
    print("wrote " + ", ".join(str(p) for p in written.values()))
    if _TENSORBOARD.value:
        from jaxdiff import exports

        for run in report.find_runs(argv[1:]):
            try:
                writer = exports.tensorboard_writer(pathlib.Path(_TENSORBOARD.value) / run.name)
            except ImportError as e:
                print(f"table: error: {e}", file=sys.stderr)
                sys.exit(2)
            exports.log_run(run, writer)
            writer.close()
        print(f"TensorBoard: tensorboard --logdir {_TENSORBOARD.value}")


def console() -> None:
    cli.run(main)


if __name__ == "__main__":
    console()
