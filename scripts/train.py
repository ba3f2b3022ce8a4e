"""Train the demo prior; kill and rerun the same command to resume from the last checkpoint.

    python -m scripts.train --config=configs/train_demo.py[:preset] --workdir=DIR \
        [--export_dir=jaxdiff/assets/demo_prior] [--loss_png=docs/demo_loss.png]

Writes ``DIR/checkpoints`` (orbax: train state + loss history), ``DIR/loss.json`` and
``DIR/loss.png`` as it goes, and at the end (or with ``--mode=export`` from the last checkpoint)
the EMA weights as a ``jaxdiff.checkpoint`` folder that ``jaxdiff.models.load_pretrained`` reads.
See jaxdiff/training.py (the loop) and jaxdiff/demo_prior.py (export, samples).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from jaxdiff import cli, demo_prior

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/train_demo.py[:preset]")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, loss curve)")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "export", "samples"],
    "train (resumes), export (last checkpoint), samples (figure from --export_dir's prior)",
)  # fmt: skip
_SAMPLES_PNG = flags.DEFINE_string("samples_png", None, "DDPM sample grid from the exported prior")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", 50, "respaced DDPM steps for the grid")
_EXPORT = flags.DEFINE_string("export_dir", None, "write the EMA weights here at the end")
_LOSS_PNG = flags.DEFINE_string("loss_png", None, "also write the loss curve here (.png/.json)")
_MAX_MINUTES = flags.DEFINE_float("max_minutes", None, "stop (after a checkpoint) past this")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    if config is None or workdir is None:
        raise app.UsageError("--config and --workdir are required")
    if _MODE.value == "samples" and not (_EXPORT.value and _SAMPLES_PNG.value):
        raise app.UsageError("--mode=samples needs --export_dir (the prior) and --samples_png")
    demo_prior.train_and_export(
        config,
        workdir,
        mode=_MODE.value,
        export_dir=_EXPORT.value,
        loss_png=_LOSS_PNG.value,
        samples_png=_SAMPLES_PNG.value,
        sample_steps=_SAMPLE_STEPS.value,
        max_minutes=_MAX_MINUTES.value,
    )


def console() -> None:
    cli.run(main, info_logs=True)  # the training progress is absl INFO lines


if __name__ == "__main__":
    console()
