"""Train the demo prior; kill and rerun the same command to resume from the last checkpoint.

    python -m scripts.train --config=configs/train_demo.py[:preset] --workdir=DIR \
        [--export_dir=jaxdiff/assets/demo_prior] [--loss_png=docs/demo_loss.png]

Writes ``DIR/checkpoints`` (orbax: train state + loss history), ``DIR/loss.json`` and
``DIR/loss.png`` as it goes, and at the end (or with ``--mode=export`` from the last checkpoint)
the EMA weights as a ``jaxdiff.checkpoint`` folder that ``jaxdiff.models.load_pretrained`` reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from jaxdiff import photos, training
from jaxdiff.models import build_model, param_count

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


class Run:
    """Everything a config determines: data, model, optimizer, jitted step and eval."""

    def __init__(self, config, model=None):
        """``model`` overrides the config's architecture (tests use a tiny stand-in)."""
        self.config = config
        d = config.data
        names = tuple(d.train_photos) or None  # () = every photo that is not held out
        self.crops = photos.training_crops(d.held_out, d.resolution, d.scales, names)
        self.make_batch = jax.jit(self.crops.make_batch_fn(d.batch_size))
        if model is None:
            model = build_model(config.model.arch, config.model.config.to_dict())
        self.model = model
        self.optimizer = training.make_optimizer(
            config.optim.lr,
            config.optim.warmup_steps,
            config.train.num_steps,
            weight_decay=config.optim.weight_decay,
            clip_norm=config.optim.clip_norm,
            b1=config.optim.b1,
            b2=config.optim.b2,
            end_lr_factor=config.optim.end_lr_factor,
        )
        loss_fn = training.make_loss_fn(self.model, config.diffusion.to_dict())
        self.train_step = jax.jit(
            training.make_train_step(loss_fn, self.optimizer, config.ema_decay), donate_argnums=0
        )
        self.eval_loss = jax.jit(training.make_eval_fn(loss_fn))
        key = jax.random.key(config.seed)
        self.init_key, self.data_key, self.noise_key, eval_key = jax.random.split(key, 4)
        # Fixed held-out crops, timesteps and noise: the curve compares like with like.
        held = photos.make_crops(d.held_out, d.resolution, d.scales)
        k_crop, self.eval_noise_key = jax.random.split(eval_key)
        self.eval_x = held.make_batch_fn(config.train.eval_batch)(k_crop, 0)

    def init_state(self) -> training.TrainState:
        r = self.config.data.resolution
        x = jnp.zeros((1, r, r, 3), jnp.float32)
        return training.init_state(self.model, self.optimizer, self.init_key, x)

    def step(self, state, step: int):
        x0 = self.make_batch(self.data_key, step)
        return self.train_step(state, x0, jax.random.fold_in(self.noise_key, step))


def empty_history(config) -> dict:
    learned = config.diffusion.variance_type in ("learned_range", "learned")
    loss = "eps MSE + vb (hybrid loss)" if learned else "eps MSE"
    return {"step": [], "loss": [], "eval_step": [], "eval_loss": [], "wall_s": 0.0,
            "title": f"demo prior ({config.preset}): {loss}"}  # fmt: skip


def train(config, workdir, max_minutes: float | None = None, log=logging.info, model=None):
    """Train to ``config.train.num_steps`` (resuming from the newest checkpoint in ``workdir``);
    returns ``(run, state, history)``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(config, model)
    tc = config.train
    mngr = training.checkpoint_manager(workdir, tc.max_to_keep)
    state = run.init_state()
    restored = training.restore_checkpoint(mngr, state)
    if restored is None:
        history = empty_history(config)
        log(f"fresh start: {param_count(state.params):,} parameters")
    else:
        state, history = restored
        log(f"resumed from {mngr.directory} at step {int(state.step)}")
    start, t0, wall0 = int(state.step), time.time(), history["wall_s"]
    losses = []

    def checkpoint(plot: bool):
        history["wall_s"] = wall0 + time.time() - t0
        training.save_checkpoint(mngr, state, history)
        if plot:  # matplotlib is slow; the curve changes little between evaluations
            training.write_loss_curve(history, workdir / "loss.png", workdir / "loss.json")

    for step in range(start, tc.num_steps):
        state, metrics = run.step(state, step)
        losses.append(metrics["loss"])
        done = step + 1
        if done % tc.log_every == 0 or done == tc.num_steps:
            loss = float(jnp.mean(jnp.stack(losses)))
            losses = []
            history["step"].append(done)
            history["loss"].append(loss)
            rate = (done - start) / (time.time() - t0)
            log(f"step {done}: loss {loss:.4f} grad_norm {float(metrics['grad_norm']):.3f} "
                f"({rate:.2f} steps/s)")  # fmt: skip
        if done % tc.eval_every == 0 or done == tc.num_steps:
            ev = float(run.eval_loss(state.ema_params, run.eval_x, run.eval_noise_key))
            history["eval_step"].append(done)
            history["eval_loss"].append(ev)
            log(f"step {done}: held-out loss (EMA weights) {ev:.4f}")
        out_of_time = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        last = done == tc.num_steps or out_of_time
        if done % tc.ckpt_every == 0 or last:
            checkpoint(plot=last or done % tc.eval_every == 0)
        if out_of_time:
            log(f"stopping at step {done}: past --max_minutes={max_minutes}")
            break
    mngr.close()
    return run, state, history


def export(run: Run, state, history, out_dir, force: bool = True):
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
    result = jax.jit(batched(sample))(params, keys)
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


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    if config is None or workdir is None:
        raise app.UsageError("--config and --workdir are required")
    if _MODE.value == "samples":
        if not (_EXPORT.value and _SAMPLES_PNG.value):
            raise app.UsageError("--mode=samples needs --export_dir (the prior) and --samples_png")
        run_crops = Run(config).crops
        write_samples(_EXPORT.value, _SAMPLES_PNG.value, run_crops, steps=_SAMPLE_STEPS.value)
        return
    if _MODE.value == "export":
        run = Run(config)
        mngr = training.checkpoint_manager(workdir, config.train.max_to_keep)
        restored = training.restore_checkpoint(mngr, jax.eval_shape(run.init_state))
        if restored is None:
            raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to export")
        state, history = restored
    else:
        run, state, history = train(config, workdir, _MAX_MINUTES.value)
    if _LOSS_PNG.value:
        png = Path(_LOSS_PNG.value)
        training.write_loss_curve(history, png, png.with_suffix(".json"))
    if _EXPORT.value:
        logging.info("exported EMA weights to %s", export(run, state, history, _EXPORT.value))
        if _SAMPLES_PNG.value:
            write_samples(_EXPORT.value, _SAMPLES_PNG.value, run.crops, steps=_SAMPLE_STEPS.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
