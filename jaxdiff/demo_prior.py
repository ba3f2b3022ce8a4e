"""The trained demo prior as a `jaxdiff.checkpoint` folder (its EMA weights and the training facts)
and a figure of its samples; `train_and_export` is scripts/train.py's whole job."""

from __future__ import annotations

import time
from pathlib import Path

import jax
from absl import logging

from jaxdiff import photos, training, xla_options
from jaxdiff.models import param_count


def export(run: training.Run, state, history, out_dir, force: bool = True):
    """Write the EMA weights + ``jaxdiff.json`` (docs/DESIGN.md) with the training facts."""
    from jaxdiff.checkpoint import save_pretrained

    c = run.config
    step = int(state.step)
    tail = history["loss"][-10:]
    meta = {
        "format_version": 1,
        "architecture": c.model.arch,
        "model_config": c.model.config.to_dict(),
        "diffusion": c.diffusion.to_dict(),
        "source": {
            "file": "trained by scripts/train.py",
            "config": f"configs/train_demo.py:{c.preset}",
            "steps": step,
            "batch_size": c.data.batch_size,
            "wall_clock_s": round(history["wall_s"], 1),
            "final_train_loss": round(sum(tail) / max(len(tail), 1), 5),
            "final_heldout_loss_ema": history["eval_loss"][-1] if history["eval_loss"] else None,
            "weights": f"EMA (decay {c.ema_decay})",
            "data": "scikit-image bundled colour photos, random crops + flips at "
            f"{c.data.resolution}x{c.data.resolution}, short side resized to resolution x "
            f"{list(c.data.scales)}",
            "training_photos": sorted(set(run.crops.sources)),
            "held_out_photos": list(c.data.held_out),
        },
        "num_parameters": param_count(state.ema_params),
    }
    return save_pretrained(out_dir, state.ema_params, meta, force=force)


def write_samples(
    prior_dir, png_path, crops: photos.PhotoCrops, n: int = 16, steps: int = 100, seed: int = 0
) -> None:
    """A grid of DDPM samples from a prior folder (jaxdiff.samplers, respaced to ``steps``),
    above real training crops at the same resolution for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxdiff.diffusion.schedule import schedule_from_meta
    from jaxdiff.models import load_pretrained, model_fn
    from jaxdiff.samplers import batched, get_sampler, raise_on_divergence

    model, params, meta = load_pretrained(prior_dir)
    r = meta["model_config"]["image_size"]
    schedule = schedule_from_meta(meta["diffusion"], respacing=str(steps))
    sample = get_sampler("ddpm")(model_fn(model), schedule, image_shape=(r, r, 3))
    keys = jax.random.split(jax.random.key(seed), n)
    t0 = time.time()
    result = jax.jit(batched(sample), compiler_options=xla_options.compiler_options())(params, keys)
    raise_on_divergence(result)
    x = np.asarray(result.x0)
    wall = time.time() - t0
    real = np.asarray(crops.make_batch_fn(8)(jax.random.key(seed + 1), 0))

    def grid(imgs, cols):
        rows = -(-len(imgs) // cols)
        pad = np.ones((rows * cols - len(imgs), r, r, 3), np.float32)
        g = np.concatenate([imgs, pad]).reshape(rows, cols, r, r, 3)
        g = np.pad(g, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
        g = g.transpose(0, 2, 1, 3, 4).reshape(rows * (r + 2), cols * (r + 2), 3)
        return np.clip((g + 1) / 2, 0, 1)

    cols = 8
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.2), height_ratios=[n // cols, 1])
    axes[0].imshow(grid(x, cols), interpolation="nearest")
    axes[0].set_title(
        f"{n} DDPM samples ({steps} respaced steps) from {Path(prior_dir).name}, "
        f"{meta['source'].get('steps')} training steps",
        fontsize=9,
    )
    axes[1].imshow(grid(real[:cols], cols), interpolation="nearest")
    axes[1].set_title("random training crops (for comparison)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    logging.info("wrote %s (%d samples in %.1f s)", png_path, n, wall)


def train_and_export(
    config,
    workdir,
    *,
    mode: str = "train",
    export_dir=None,
    loss_png=None,
    samples_png=None,
    sample_steps: int = 50,
    max_minutes: float | None = None,
) -> None:
    """mode "train" (resumes), "export" (the last checkpoint of `workdir`) or "samples" (the
    figure from `export_dir`'s prior); then the loss curve, the export and the sample figure
    where their paths are given."""
    if export_dir and mode != "samples":  # a folder export may not replace: before training
        from jaxdiff.checkpoint import check_replaceable

        check_replaceable(Path(export_dir), force=True)
    if mode == "samples":
        write_samples(export_dir, samples_png, training.Run(config).crops, steps=sample_steps)
        return
    if mode == "export":
        run = training.Run(config)
        mngr = training.checkpoint_manager(workdir, config.train.max_to_keep)
        restored = training.restore_checkpoint(mngr, jax.eval_shape(run.init_state))
        if restored is None:
            raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to export")
        state, history = restored
    else:
        run, state, history = training.train(config, workdir, max_minutes)
    if loss_png:
        png = Path(loss_png)
        training.write_loss_curve(history, png, png.with_suffix(".json"))
    if export_dir:
        logging.info("exported EMA weights to %s", export(run, state, history, export_dir))
        if samples_png:
            write_samples(export_dir, samples_png, run.crops, steps=sample_steps)
