"""The main job on the bundled demo prior: every method on every demo task, one table.

    pip install -e . && python -m scripts.demo --workdir=runs/demo

Defaults: the demo prior bundled in the package (a 32x32 ADM UNet) and its three held-out demo
photos (astronaut, chelsea, coffee); --config.model=DIR and --config.data=FOLDER take others.
Runs unconditional DDPM samples of the prior and every pixel-space method (plus the classical
baselines and the measurement itself, the floor) on box inpainting and Gaussian deblurring of the
prior's held-out photos; `--config.tasks=box,random,gaussian_blur,sr2` adds random inpainting
and 2x super-resolution (settings: configs/demo.py).
Each (method, task) is an ordinary driver run in workdir/METHOD_TASK (one compile, resumable),
so `python -m scripts.table` works on them too. Writes workdir/table.{md,csv,png},
workdir/grid_TASK.png and workdir/ddpm_samples.png, and prints where they are. See
jaxdiff/demo.py.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxdiff import cli, config_lib, demo

DEFAULT_CONFIG = str(config_lib.config_path("demo"))
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "demo config (default configs/demo.py). Defaults: model = the demo prior bundled in the "
    "package (--config.model=demo; a converted folder instead: --config.model=DIR), data = the "
    "demo photos astronaut, chelsea and coffee (--config.data=demo; --config.data=FOLDER), "
    "the methods, tasks and steps of configs/demo.py (--config.methods=dps,ddrm ...)",
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "output folder (re-use it to resume)")
_PROGRESS = flags.DEFINE_bool("progress", True, "show progress bars")


def main(argv):
    cli.no_positional_args(argv)
    result = demo.run_demo(_CONFIG.value, _WORKDIR.value, _PROGRESS.value)
    print(demo.describe(result, _CONFIG.value, _WORKDIR.value))


def console() -> None:
    cli.run(main, default_config=DEFAULT_CONFIG)


if __name__ == "__main__":
    console()
