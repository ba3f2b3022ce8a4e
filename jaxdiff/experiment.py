"""One experiment = a model, a task (operator + noise), a method and images: built from a config.

The driver (`scripts/reproduce.py`), the sweep and the demo all run the same per-image pipeline

    k_op, k_noise, k_method = split(fold_in(PRNGKey(seed), image_index), 3)
    op_params = operator.sample(k_op); y = noise(k_noise, operator.apply(op_params, x))
    x_hat = method(params, k_method, y, op_params, hparams)

vmapped over images (axis "batch") and, for a sweep, over hyperparameter values; hyperparameters
are traced, so one compiled program serves every image and every value. A result's random
draws depend on its seed and its image's index alone, never on the batch it ran in or the device
count (values: bitwise at equal batch and devices, to float32 rounding otherwise).

Methods: a sampler name (jaxdiff.samplers), a baseline name (jaxdiff.baselines), or
"measurement": the measurement itself on the image grid, no reconstruction (the floor every method
must beat; nearest-neighbour pixels for super-resolution, where "bicubic" is the baseline).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import tasks
from jaxdiff.diffusion import schedule_from_meta
from jaxdiff.errors import ConfigError
from jaxdiff.latent import LatentModel, is_latent_prior, latent_schedule, load_latent
from jaxdiff.operators import get_noise, get_operator
from jaxdiff.samplers import SAMPLERS, get_sampler
from jaxdiff.samplers.base import Range, check_range
from jaxdiff.samplers.loop import progress_interval
from jaxdiff.samplers.particles import PARTICLE_OPTIONS

log = logging.getLogger("jaxdiff.experiment")

DEMO_PRIOR = pathlib.Path(__file__).parent / "assets" / "demo_prior"
NOISE_SIGMA = "noise_sigma"  # the pipeline's own traced hyperparameter: the measurement noise std
NOISE_SIGMA_RANGE = Range.parse("[0, 2]")  # on the [-1, 1] scale; 0 = y = Ax

# Operator-config keys that are lengths in pixels (scaled with the image size) and how.
_LENGTHS = {
    "mask_len_range": "int_range",  # (l, h) with h exclusive: l scales, h stays l + (h - l)
    "margin": "ints",
    "kernel_size": "odd",
    "std": "float",
}


# --- model, task ---------------------------------------------------------------------------
def resolve_model_dir(model: str) -> pathlib.Path:
    path = DEMO_PRIOR if model in ("", "demo") else pathlib.Path(model).expanduser()
    if is_latent_prior(path):
        return path
    if not (path / "jaxdiff.json").is_file():
        hint = (
            "the demo prior is not bundled in this checkout (jaxdiff/assets/demo_prior)"
            if path == DEMO_PRIOR
            else "convert a checkpoint first: python -m convert_weights SRC --out DIR"
        )
        raise FileNotFoundError(f"model {str(path)!r} has no jaxdiff.json: {hint}")
    return path


def model_image_size(meta: dict) -> int:
    cfg = meta.get("model_config", {})
    size = cfg.get("image_size", cfg.get("sample_size"))
    if isinstance(size, (list, tuple)):
        size = size[0]
    if size is None:
        raise ValueError("model meta has no model_config.image_size / sample_size")
    return int(size)


def _odd(v: float) -> int:
    return max(3, 2 * int(math.floor((v - 1) / 2 + 0.5)) + 1)


def scale_task(task: dict, image_size: int) -> dict:
    """The task at `image_size`: pixel lengths scaled by image_size / reference_size.

    Box sizes and margins round to integers, kernel sizes to the nearest odd integer >= 3, the
    Gaussian std scales as a float; fractions, the SR factor and the motion intensity stay.
    """
    task = dict(task)
    ref = int(task.get("reference_size", image_size))
    s = image_size / ref
    cfg = dict(task.get("operator_config", {}))
    if s != 1:
        for key, kind in _LENGTHS.items():
            if key not in cfg:
                continue
            v = cfg[key]
            if kind == "int_range":
                lo = max(1, round(v[0] * s))
                cfg[key] = (lo, lo + (v[1] - v[0]))
            elif kind == "ints":
                cfg[key] = tuple(max(0, round(x * s)) for x in v)
            elif kind == "odd":
                cfg[key] = _odd(v * s)
            else:
                cfg[key] = float(v) * s
    task["operator_config"] = cfg
    task["image_size"] = image_size
    task["length_scale"] = s
    tasks.warn_if_trivial(task)  # a preset scaled far down may no longer pose its problem
    return task


# --- methods ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Method:
    """`fn(params, key, y, op_params, hparams, valid) -> (x_hat, diverged_at)` for ONE image.

    hparams: the traced defaults (sweepable). jittable=False: a host-side baseline (OpenCV),
    run eagerly image by image after the jitted measurement.
    """

    name: str
    kind: str  # "sampler" | "baseline" | "measurement"
    fn: Callable
    hparams: dict
    jittable: bool = True
    info: dict = dataclasses.field(default_factory=dict)


def measurement_as_image(y, image_shape, resize: str = "cubic"):
    """The measurement brought to image shape: itself, resized, or grey tiled to RGB.

    SDEdit and Tweedie start from the bicubic version; the "measurement" method (the floor: no
    reconstruction at all) shows a low-resolution y with nearest-neighbour pixels, so that it
    differs from the bicubic baseline."""
    image_shape = tuple(image_shape)
    if tuple(y.shape) == image_shape:
        return y
    if y.shape[-1] != image_shape[-1]:
        y = jnp.broadcast_to(jnp.mean(y, axis=-1, keepdims=True), (*y.shape[:-1], image_shape[-1]))
    if y.shape[:-1] != image_shape[:-1]:
        y = jax.image.resize(y, image_shape, resize)
    return y


def _sampler_method(config, model, meta, operator, noise, image_shape, progress=False) -> Method:
    from jaxdiff.models import model_fn

    name = config.method
    sc = config.sampler
    opts = dict(sc.options)
    mask_opt = opts.pop("use_mask", False)
    if mask_opt:
        opts["mask"] = lambda op_params: op_params["mask"]
    variance = opts.pop("variance_type", None)
    if isinstance(model, LatentModel):  # a latent prior: its UNet, scheduler and first stage
        from jaxdiff.latent import latent_model_fn

        schedule = latent_schedule(model.prior, sc.respacing or None)
        opts["latent"], net = model.fns, latent_model_fn(model.prior)
    else:
        schedule = schedule_from_meta(meta["diffusion"], sc.respacing or None, variance)
        net = model_fn(model)
    if "sigma" in opts:
        raise ValueError("sampler.options.sigma: set sampler.hparams.sigma instead (traced)")
    make = get_sampler(name)
    if progress:  # about 50 host callbacks per pass (samplers/loop.py)
        opts.setdefault("progress_every", progress_interval(schedule.num_steps))
    if "guide" in make.needs:  # SDEdit, Tweedie: start from an image made from the measurement
        opts.setdefault("guide", lambda op_params, y: measurement_as_image(y, image_shape))
    sample = make(net, schedule, operator=operator, noise=noise, image_shape=image_shape, **opts)
    make.check_hparams(dict(sc.hparams), f"{name} (sampler.hparams)")  # before any compile
    hp = {k: float(v) for k, v in dict(sc.hparams).items()}
    # A sampler that assumes a measurement sigma (Score-ALD, Tweedie) gets the task's, traced, so
    # it follows a noise_sigma sweep; an explicit sampler.hparams.sigma overrides it.
    takes_sigma = "sigma" in make.hparams

    def fn(params, key, y, op_params, hparams, valid):
        h = dict(hparams)
        sigma = h.pop(NOISE_SIGMA)
        if takes_sigma and "sigma" not in h:
            h["sigma"] = sigma
        out = sample(params, key, y, op_params, h, None, valid)
        return out.x0, out.diverged_at

    info = {
        "num_steps": schedule.num_steps,
        "respacing": sc.respacing,
        "variance_type": schedule.variance_type,
        "num_train_timesteps": schedule.num_train_timesteps,
    }
    # particle samplers: how many, how resampled, and which estimator made x_hat
    factory = inspect.signature(make.make).parameters
    for opt in PARTICLE_OPTIONS:
        if opt in factory:
            info[opt] = opts.get(opt, factory[opt].default)
    return Method(name, "sampler", fn, hp, True, info)


def _baseline_method(config, operator, noise_sigma: float, image_shape) -> Method:
    """A classical baseline; its keyword arguments are static (the baselines check them in
    Python), so they are not sweepable. Host-side ones (OpenCV) run eagerly per image."""
    from jaxdiff.baselines import BASELINES, HOST_SIDE

    base = BASELINES.get(config.method)
    cfg = dict(config.baseline)
    if "noise_sigma" in inspect.signature(base).parameters:
        cfg.setdefault("noise_sigma", noise_sigma)  # Wiener: the task's noise level

    def fn(params, key, y, op_params, hparams, valid):
        del params, key, hparams, valid
        x = measurement_as_image(jnp.asarray(base(y, operator, op_params, **cfg)), image_shape)
        return x, jnp.asarray(-1, jnp.int32)

    jittable = config.method not in HOST_SIDE
    return Method(config.method, "baseline", fn, {}, jittable, {"config": cfg})


def _measurement_method(image_shape) -> Method:
    def fn(params, key, y, op_params, hparams, valid):
        return measurement_as_image(y, image_shape, "nearest"), jnp.asarray(-1, jnp.int32)

    return Method("measurement", "measurement", fn, {})


def method_names() -> list[str]:
    from jaxdiff.baselines import BASELINES

    return list(SAMPLERS.names()) + ["measurement"] + list(BASELINES.names())


# --- the experiment ------------------------------------------------------------------------------
@dataclasses.dataclass
class Experiment:
    config: object
    model_dir: pathlib.Path
    model: object
    params: object
    meta: dict
    image_size: int
    task: dict  # the effective (scaled) task
    operator: object
    noise: object
    method: Method

    @property
    def image_shape(self):
        return (self.image_size, self.image_size, 3)

    def default_hparams(self) -> dict:
        h = dict(self.method.hparams)
        h[NOISE_SIGMA] = float(self.task.get("sigma", 0.0))
        return h

    def check_hparams(self, values: dict, where: str = "sweep") -> None:
        """Values for the traced hyperparameters (scalars, or a sweep's sequences) against their
        names and declared ranges: a ConfigError naming the first bad value, before compiling."""
        values = dict(values)
        sigma = values.pop(NOISE_SIGMA, None)
        if sigma is not None:
            if self.task["noise"] != "gaussian":
                raise ConfigError(
                    f"{where}: {NOISE_SIGMA} sets the std of Gaussian measurement noise, but the "
                    f"task's noise is {self.task['noise']!r}"
                )
            for v in np.ravel(np.asarray(sigma, np.float64)):
                check_range(where, NOISE_SIGMA, v, NOISE_SIGMA_RANGE)
        if self.method.kind == "sampler":
            SAMPLERS.get(self.method.name).check_hparams(values, f"{where} ({self.method.name})")
        elif values:
            raise ConfigError(
                f"{where}: {sorted(values)} not traced hyperparameter(s) of "
                f"{self.method.name}; traced: {NOISE_SIGMA}"
            )

    def program_key(self) -> str:
        """What the compiled pipeline depends on: the config without the data, seed, counts,
        outputs and traced hyperparameter values, plus the architecture and schedule (the
        weights are an argument, so any checkpoint of the same architecture shares it)."""
        cfg = json.loads(json.dumps(self.config.to_dict(), default=str))
        for k in ("model", "data", "seed", "num_images", "batch_size", "output", "metrics"):
            cfg.pop(k, None)
        cfg.get("sampler", {}).pop("hparams", None)
        arch = {k: self.meta.get(k) for k in ("architecture", "model_config", "diffusion")}
        blob = json.dumps([cfg, arch, self.task], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def pipeline(self):
        """`one(params, key, x, hparams, valid) -> {"y", "x_hat", "diverged"}` for ONE image."""
        operator, noise, method = self.operator, self.noise, self.method
        gaussian = getattr(noise, "name", "") == "gaussian"

        def measure(key, x, hparams):
            k_op, k_noise, k_method = jax.random.split(key, 3)
            op_params = operator.sample(k_op)
            ax = operator.apply(op_params, x)
            if gaussian:  # = Gaussian.sample, with the std traced so it can be swept
                y = ax + hparams[NOISE_SIGMA] * jax.random.normal(k_noise, ax.shape, ax.dtype)
            else:
                y = noise.sample(k_noise, ax)
            return y, op_params, k_method

        def one(params, key, x, hparams, valid=True):
            y, op_params, k_method = measure(key, x, hparams)
            x_hat, diverged = method.fn(params, k_method, y, op_params, hparams, valid)
            return {"y": y, "x_hat": x_hat, "diverged": diverged}

        one.measure = measure
        return one


def build(config, *, loaded=None, progress: bool = False) -> Experiment:
    """Everything a run needs, from a config (see jaxdiff.config_lib.base_config).

    `loaded=(model_dir, model, params, meta)` reuses an already loaded model (the demo);
    `progress` adds a per-step progress bar from inside the sampler's scan."""
    if loaded is None:
        from jaxdiff.models import load_pretrained

        model_dir = resolve_model_dir(config.model)
        if is_latent_prior(model_dir):
            model, params, meta = load_latent(model_dir)
        else:
            model, params, meta = load_pretrained(model_dir, remat=config.get("remat", "none"))
    else:
        model_dir, model, params, meta = loaded
    size = model_image_size(meta)
    task = scale_task(config.task.to_dict(), size)
    if task["noise"] == "clean":  # y = Ax: the preset's sigma is not applied, nor assumed
        task["sigma"] = 0.0
    shape = (size, size, 3)
    operator = get_operator(task["operator"], image_shape=shape, **task["operator_config"])
    if task["noise"] == "gaussian":
        noise = get_noise("gaussian", sigma=task["sigma"])
        check_range("task", "sigma", task["sigma"], NOISE_SIGMA_RANGE)
    elif task["noise"] == "poisson":
        noise = get_noise("poisson", rate=task.get("rate", 1.0))
    else:
        noise = get_noise(task["noise"])
    name = config.method
    if name == "measurement":
        method = _measurement_method(shape)
    elif name in SAMPLERS:
        method = _sampler_method(config, model, meta, operator, noise, shape, progress)
    else:
        try:
            method = _baseline_method(config, operator, float(task.get("sigma", 0.0)), shape)
        except (KeyError, ImportError):
            raise KeyError(f"unknown method {name!r}; known: {', '.join(method_names())}") from None
    return Experiment(config, model_dir, model, params, meta, size, task, operator, noise, method)
