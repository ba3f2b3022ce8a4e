"""Training a denoiser: the epsilon-prediction loss (plus the variational bound for a learned
variance), the train state with an EMA of the weights, one jit-able step, orbax checkpoints
that resume bit-for-bit, and the loop that trains the demo prior from its config
(configs/train_demo.py; scripts/train.py, export in jaxdiff/demo_prior.py).

Everything random is derived from ``(key, step)`` with ``fold_in``, so a run killed at any
checkpoint and restarted replays exactly the batches, timesteps and noise it would have drawn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from jaxdiff import photos, xla_options
from jaxdiff.diffusion import gaussian, losses
from jaxdiff.diffusion.schedule import Schedule, schedule_from_meta
from jaxdiff.models import build_model, param_count
from jaxdiff.workdir import claim, config_dict

Params = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Params
    ema_params: Params
    opt_state: Any


def make_optimizer(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    *,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    end_lr_factor: float = 0.1,
) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, linear warm-up then cosine decay to ``end_lr_factor*lr``
    (warm-up avoids the early Adam blow-ups of a zero-initialised output head)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")
    sched = optax.warmup_cosine_decay_schedule(
        0.0, lr, max(warmup_steps, 1), total_steps, end_value=lr * end_lr_factor
    )
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(sched, b1=b1, b2=b2, weight_decay=weight_decay),
    )


def per_image_tables(schedule: Schedule, t: jax.Array) -> dict:
    """The schedule's float32 tables at each image's step ``t`` (B,), shaped (B, 1, 1, 1) so
    that ``jaxdiff.diffusion.gaussian`` broadcasts them over NHWC images."""
    c = schedule.gather(t, jnp.float32)
    return {k: v.reshape(-1, 1, 1, 1) for k, v in c.items()}


def make_loss_fn(model: nn.Module, diffusion: dict) -> Callable:
    """``loss(params, x0, key) -> (scalar, per_image)`` with t uniform over all training steps.

    Fixed variance (``diffusion["variance_type"]`` fixed_small / fixed_large): the simple DDPM
    loss ``|eps_hat(x_t, t) - eps|^2``. Learned variance (learned_range / learned; the model
    outputs eps and variance channels): improved DDPM's hybrid loss, that MSE plus the
    variational-bound term of ``jaxdiff.diffusion.losses`` (through the variance channels only)
    times num_timesteps / 1000, as guided-diffusion trains ``learn_sigma`` models. A model whose
    output channels do not match the variance type is an error, not a silently untrained head.
    """
    schedule = schedule_from_meta(diffusion)
    num_t = schedule.num_train_timesteps

    def loss_fn(params, x0, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, num_t)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        c = per_image_tables(schedule, t)
        x_t = gaussian.q_sample(c, x0, eps)
        out = model.apply({"params": params}, x_t, t, train=True, rngs={"dropout": k_drop})
        eps_hat, v = gaussian.split_model_output(out, x0.shape[-1], schedule.variance_type)
        per_image = jnp.mean((eps_hat - eps) ** 2, axis=(1, 2, 3))
        if schedule.learned_variance:
            vb = losses.vb_terms_bpd(
                c, schedule.variance_type, x0, x_t, t, jax.lax.stop_gradient(eps_hat), v
            )
            per_image = per_image + vb * (num_t / 1000.0)
        return jnp.mean(per_image), per_image

    return loss_fn


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """min(decay, (1 + step) / (10 + step)): the average forgets the random init quickly."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def init_state(model: nn.Module, optimizer, key: jax.Array, sample_x: jax.Array) -> TrainState:
    params = model.init(key, sample_x, jnp.zeros((sample_x.shape[0],), jnp.int32))["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def make_train_step(loss_fn: Callable, optimizer, ema_decay: float) -> Callable:
    """``step(state, x0, key) -> (state, metrics)``, pure and jit-able."""

    def train_step(state: TrainState, x0: jax.Array, key: jax.Array):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x0, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = ema_decay_at(state.step, ema_decay)
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
        new = TrainState(state.step + 1, params, ema, opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def make_eval_fn(loss_fn: Callable) -> Callable:
    """``eval(params, x0, key) -> mean loss`` on fixed images with fixed t and noise."""
    return lambda params, x0, key: loss_fn(params, x0, key)[0]


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoint_manager(workdir, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """Orbax manager under ``workdir/checkpoints``: the train state plus the loss history."""
    path = Path(workdir).absolute() / "checkpoints"
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(path, options=opts, item_names=("state", "history"))


def save_checkpoint(mngr: ocp.CheckpointManager, state: TrainState, history: dict) -> None:
    step = int(state.step)
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)
        ),
    )
    mngr.wait_until_finished()


def restore_checkpoint(
    mngr: ocp.CheckpointManager, like: TrainState, step: int | None = None
) -> tuple[TrainState, dict] | None:
    """The latest (or given) checkpoint restored into ``like``'s structure, or None if none."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)  # arrays or eval_shape
    got = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
        ),
    )
    state = got["state"]
    if int(state.step) != step:
        raise ValueError(f"checkpoint {mngr.directory}/{step}: holds step {int(state.step)}")
    return state, dict(got["history"])


def write_loss_curve(history: dict, png_path, json_path) -> None:
    """The loss history as JSON and a PNG (raw loss, its running mean, held-out EMA loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(json_path).write_text(json.dumps(history, indent=1) + "\n")
    steps, loss = np.asarray(history["step"]), np.asarray(history["loss"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="train loss (mean per log interval)")
    if len(loss) >= 2:
        k = max(1, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"train loss (running mean of {k})")
    if history.get("eval_step"):
        ax.plot(history["eval_step"], history["eval_loss"], "o-", ms=3,
                label="held-out photos, EMA weights")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(history.get("title", "demo prior training"))
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


# ---- the demo prior's training loop -------------------------------------------------------


def check_config(config) -> None:
    """The counts a training run divides by or loops over, checked before anything is written
    (a batch size of 0 was a ZeroDivisionError inside the first jitted batch, a log_every of
    0 one at the first step): ConfigError naming each."""
    from jaxdiff.errors import ConfigError

    counts = {
        "data.batch_size": config.data.batch_size,
        "data.resolution": config.data.resolution,
        **{f"train.{k}": config.train[k] for k in ("num_steps", "log_every", "eval_every",
                                                    "eval_batch", "ckpt_every", "max_to_keep")},
    }  # fmt: skip
    problems = [
        f"{k}={v!r} must be an integer >= 1"
        for k, v in counts.items()
        if isinstance(v, bool) or not isinstance(v, int) or v < 1
    ]
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


class Run:
    """Everything a config determines: data, model, optimizer, jitted step and eval."""

    def __init__(self, config, model=None):
        """``model`` overrides the config's architecture (tests use a tiny stand-in)."""
        check_config(config)
        self.config = config
        d = config.data
        names = tuple(d.train_photos) or None  # () = every photo that is not held out
        self.crops = photos.training_crops(d.held_out, d.resolution, d.scales, names)
        self.make_batch = jax.jit(self.crops.make_batch_fn(d.batch_size))
        if model is None:
            model = build_model(config.model.arch, config.model.config.to_dict())
        self.model = model
        self.optimizer = make_optimizer(
            config.optim.lr,
            config.optim.warmup_steps,
            config.train.num_steps,
            weight_decay=config.optim.weight_decay,
            clip_norm=config.optim.clip_norm,
            b1=config.optim.b1,
            b2=config.optim.b2,
            end_lr_factor=config.optim.end_lr_factor,
        )
        loss_fn = make_loss_fn(self.model, config.diffusion.to_dict())
        options = xla_options.compiler_options()  # XLA:CPU: 1.4x faster steps at batch 16
        self.train_step = jax.jit(
            make_train_step(loss_fn, self.optimizer, config.ema_decay),
            donate_argnums=0,
            compiler_options=options,
        )
        self.eval_loss = jax.jit(make_eval_fn(loss_fn), compiler_options=options)
        key = jax.random.key(config.seed)
        self.init_key, self.data_key, self.noise_key, eval_key = jax.random.split(key, 4)
        # Fixed held-out crops, timesteps and noise: the curve compares like with like.
        held = photos.make_crops(d.held_out, d.resolution, d.scales)
        k_crop, self.eval_noise_key = jax.random.split(eval_key)
        self.eval_x = held.make_batch_fn(config.train.eval_batch)(k_crop, 0)

    def init_state(self) -> TrainState:
        r = self.config.data.resolution
        x = jnp.zeros((1, r, r, 3), jnp.float32)
        return init_state(self.model, self.optimizer, self.init_key, x)

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
    run = Run(config, model)
    claim(workdir, "train", config_dict(config))  # before anything is written there
    tc = config.train
    mngr = checkpoint_manager(workdir, tc.max_to_keep)
    state = run.init_state()
    restored = restore_checkpoint(mngr, state)
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
        save_checkpoint(mngr, state, history)
        if plot:  # matplotlib is slow; the curve changes little between evaluations
            write_loss_curve(history, workdir / "loss.png", workdir / "loss.json")

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
