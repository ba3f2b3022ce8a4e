"""What the config files (configs/*.py) share: the base config, the `get_config(arg)` argument
parser, and where the config files are.

A config file imports only `jaxdiff.*` and ml_collections, so ml_collections' config_flags can
load it by path from anywhere (`--config=configs/dps.py:box`); installed, the files are package
data under jaxdiff/configs (setup.py), and `jaxdiff.cli` resolves `--config=dps:box` to them.

    python -m scripts.reproduce --config=configs/dps.py:box --workdir=runs/dps_box \
        --config.model=CONVERTED_DIR --config.data=IMAGE_FOLDER --config.num_images=100

`model = "demo"` is the bundled demo prior (jaxdiff/assets/demo_prior) and `data = "demo"` its
held-out photos, so every command works out of the box; point them at a converted checkpoint and
an image folder (PNG/JPEG, centre-cropped and resized to the model's size) for real runs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from collections.abc import Sequence

import ml_collections

from jaxdiff import tasks

_HERE = pathlib.Path(__file__).resolve().parent


# --- the argument of get_config(arg) --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Choice:
    """A `parse_arg` key whose value is one of `choices` (a positional value that is not one
    goes on to the next key)."""

    default: str | None
    choices: Sequence[str]


def task_choice(default: str = "box") -> Choice:
    """The `task` key of the method configs: a preset name of jaxdiff.tasks."""
    return Choice(default, tuple(tasks.TASKS))


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def _convert(where: str, key: str, default, text: str):
    """`text` as the type of `default` (bool strictly, int, float, else str)."""
    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{where}: {key}={text!r} is not a boolean (true / false)")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise ValueError(f"{where}: {key}={text!r} is not a {type(default).__name__}") from None
    return text


def parse_arg(arg: str | None, config_file: str, **spec) -> ml_collections.ConfigDict:
    """The argument of `get_config(arg)` as typed values (big_vision configs/common.py parse_arg).

    `spec` names the keys with their defaults, in positional order; a default's type types its
    value, and a `Choice` restricts it to a set of names. `arg` is "a=1,b=x", positional values
    ("sr4", "telea,box") that fill the keys in order (a value a key cannot take, outside its
    Choice or not of its type, goes on to the next key), or both; a bare boolean key name sets it
    true ("demo,learn_sigma").
    Unknown keys and bad values are a ValueError naming `config_file` (pass `__file__`).
    """
    where = f"configs/{pathlib.Path(config_file).name}"
    defaults = {k: v.default if isinstance(v, Choice) else v for k, v in spec.items()}
    out, given = dict(defaults), set()

    def put(key, text):
        if key in given:
            raise ValueError(f"{where}: {key} given twice in {arg!r}")
        rule = spec[key]
        if isinstance(rule, Choice):
            if text not in rule.choices:
                raise ValueError(
                    f"{where}: unknown {key} {text!r}; known: {', '.join(rule.choices)}"
                )
            value = text
        else:
            value = _convert(where, key, defaults[key], text)
        out[key] = value
        given.add(key)

    for part in (p.strip() for p in (arg or "").split(",")):
        if not part:
            continue
        key, eq, text = part.partition("=")
        key = key.strip()
        if eq:
            if key not in spec:
                raise ValueError(f"{where}: unknown key {key!r} in {arg!r}; known: {_keys(spec)}")
            put(key, text.strip())
        elif isinstance(defaults.get(part), bool):
            put(part, "true")
        else:
            put(_positional_key(where, spec, given, part, arg), part)
    return ml_collections.ConfigDict(out)


def _keys(spec) -> str:
    return ", ".join(spec) or "none"


def _positional_key(where: str, spec: dict, given: set, text: str, arg) -> str:
    """The first key not yet given (and not boolean) that takes the positional value `text`."""
    open_keys = [k for k, v in spec.items() if k not in given and not isinstance(v, bool)]
    for key in open_keys:
        rule = spec[key]
        if text in rule.choices if isinstance(rule, Choice) else _fits(rule, text):
            return key
    if not open_keys:
        raise ValueError(f"{where}: too many values in {arg!r}; keys: {_keys(spec)}")
    wants = "; ".join(
        f"{k}: one of {', '.join(spec[k].choices)}"
        if isinstance(spec[k], Choice)
        else f"{k}: {type(spec[k]).__name__}"
        for k in open_keys
    )
    raise ValueError(f"{where}: {text!r} (in {arg!r}) fits no key; {wants}")


def _fits(default, text: str) -> bool:
    try:
        _convert("", "", default, text)
    except ValueError:
        return False
    return True


# --- the base config ----------------------------------------------------------------------------
def base_config(task: str = "box") -> ml_collections.ConfigDict:
    """The config every method config starts from (big_vision / score_sde style), on `task`."""
    c = ml_collections.ConfigDict()
    c.method = "ddpm"  # a jaxdiff.samplers name, a jaxdiff.baselines name, or "measurement"
    c.task = tasks.get_task(task)

    c.model = "demo"  # converted checkpoint folder (python -m convert_weights), or "demo"
    # block rematerialisation of the network (jaxdiff/models/remat.py): "blocks" recomputes each
    # block's activations in the backward pass (about 0.6x the gradient methods' memory per
    # image); changes no number
    c.remat = "none"
    c.data = "demo"  # image folder, or "demo" (the demo prior's held-out photos)
    c.num_images = 0  # the first N images of the folder (sorted by name); 0 = all
    # a named list of jaxdiff.images, e.g. "ffhq_dps_1k" (the DPS paper's FFHQ split)
    c.image_list = ""
    c.seed = 0  # per-image key = fold_in(PRNGKey(seed), index of the file in the sorted folder)
    c.batch_size = 0  # images per compiled call, padded to the device count; 0 = min(N, 8)

    c.sampler = ml_collections.ConfigDict()
    # DPS configs/diffusion_config.yaml timestep_respacing 1000: every step of a
    # 1000-step model. A respacing spec of jaxdiff.diffusion.space_timesteps ("100", "ddim50").
    c.sampler.respacing = "1000"
    c.sampler.options = ml_collections.ConfigDict()  # static factory options (clip_denoised, ...)
    c.sampler.hparams = ml_collections.ConfigDict()  # traced hyperparameters (sweepable)

    c.baseline = ml_collections.ConfigDict()  # keyword arguments of a classical baseline

    c.metrics = ml_collections.ConfigDict()
    c.metrics.lpips_net = "vgg"  # DPS reports LPIPS-VGG (util/compute_metric.py)
    # "clip": the reconstruction clipped to [-1, 1] (what the PNG holds). "minmax": per-image
    # min-max normalisation of both images, as the DPS repo's saved images
    # (DPS sample_condition.py).
    c.metrics.range = "clip"
    # FID / KID (set-level, reconstructions vs ground truth, pytorch-fid / torch-fidelity): the
    # folder of pytorch-fid's pt_inception-2015-12-05-6726825d.pth converted by
    # `python -m convert_weights FILE --out DIR`; "" = not computed (reported as missing).
    c.metrics.inception = ""
    c.metrics.fid_sqrtm = "scipy"  # pytorch-fid's scipy.linalg.sqrtm; "svd": same value, fast
    c.metrics.kid_subsets = 100  # torch-fidelity defaults (subset size capped at the image count)
    c.metrics.kid_subset_size = 1000
    # where the ground truth's features are cached (keyed by content); "" = the user's cache
    # folder: $JAXDIFF_CACHE_DIR, else $XDG_CACHE_HOME/jaxdiff, else ~/.cache/jaxdiff
    c.metrics.reference_stats = ""

    c.output = ml_collections.ConfigDict()
    c.output.save_images = True  # truth / measurement / reconstruction PNGs per image
    c.output.figure_images = 8  # rows of the figure grid
    return c


# --- where the config files are -----------------------------------------------------------------
def config_dir() -> pathlib.Path:
    """The config files: jaxdiff/configs when installed (setup.py), else the checkout's configs/
    beside jaxdiff/."""
    installed = _HERE / "configs"
    if installed.is_dir():
        return installed
    checkout = _HERE.parent / "configs"
    if (_HERE.parent / "setup.py").is_file() and checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"no config files beside {_HERE} (jaxdiff/configs or ../configs)")


def config_names() -> list[str]:
    """The config files' names (`dps`, `baselines`, ...)."""
    return sorted(p.stem for p in config_dir().glob("*.py") if not p.stem.startswith("_"))


def config_path(name: str) -> pathlib.Path:
    """The config file `name` ("demo", "demo.py" or "configs/demo.py"); an unknown name is a
    ValueError listing the known ones."""
    path = pathlib.PurePath(name)
    stem = path.name.removesuffix(".py")
    if str(path.parent) in (".", "configs") and stem in config_names():
        return config_dir() / f"{stem}.py"
    raise ValueError(f"unknown config {name!r}; known: {', '.join(config_names())}")


@functools.cache
def config_module(name: str):
    """The config file `name` as a module, loaded by path as ml_collections' config_flags loads
    it (no `configs` package; once per process)."""
    path = config_path(name)
    spec = importlib.util.spec_from_file_location(f"jaxdiff_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


__all__ = [
    "Choice",
    "base_config",
    "config_dir",
    "config_module",
    "config_names",
    "config_path",
    "parse_arg",
    "task_choice",
]
