"""Configs: every method x task preset builds, overrides apply, the paper preset is the paper's."""

from __future__ import annotations

import importlib
import inspect
import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from configs import baselines as baseline_configs
from configs import demo, tasks
from jaxdiff.baselines import BASELINES
from jaxdiff.diffusion import schedule_from_meta
from jaxdiff.experiment import scale_task
from jaxdiff.operators import get_operator
from jaxdiff.samplers import SAMPLERS

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
# every registered sampler with a config file of its own (configs/ddnm.py also runs ddnm_plus)
METHODS = tuple(m for m in SAMPLERS.names() if (CONFIGS / f"{m}.py").exists())
NO_SVD = ("motion_blur", "phase_retrieval")  # operators with no SVD form
NONLINEAR = ("phase_retrieval",)
DIFFUSION_1000 = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "variance_type": "learned_range",
    "schedule_dtype": "float64",
}


def _cfg(method, arg):
    return importlib.import_module(f"configs.{method}").get_config(arg)


def test_every_registered_sampler_has_a_config():
    reached = {_cfg(m, "box").method for m in METHODS} | set(METHODS)
    assert set(SAMPLERS.names()) <= reached, set(SAMPLERS.names()) - reached


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_every_method_task_preset_builds(method, task):
    needs = SAMPLERS.get(method).needs
    # exactly the tasks the method cannot take are refused, by name, at config time
    refused = (task in NO_SVD and "svd" in needs) or (
        task in NONLINEAR and ("linear" in needs or method in ("reddiff",))
    )
    if refused:
        with pytest.raises(ValueError, match=task):
            _cfg(method, task)
        return
    c = _cfg(method, task)
    assert c.method in (method, f"{method}_plus") and c.task.name == task
    assert c.task.noise == "gaussian" and c.task.sigma == 0.05
    assert c.model == "demo" and c.data == "demo"  # works out of the box
    assert tasks.get_task(task).operator == c.task.operator


@pytest.mark.parametrize(
    "name,task", [(b, t) for b, ts in baseline_configs.APPLIES.items() for t in ts]
)
def test_every_baseline_task_preset_builds(name, task):
    c = baseline_configs.get_config(f"{name},{task}")
    assert c.method == name and c.task.name == task


def test_baseline_default_per_task_and_errors():
    assert baseline_configs.get_config("gaussian_blur").method == "wiener"
    assert baseline_configs.get_config("sr4").method == "bicubic"
    # keyword defaults are copied from the baseline, so --config.baseline.lam=... can override
    lam = inspect.signature(BASELINES.get("tv_least_squares")).parameters["lam"].default
    assert dict(baseline_configs.get_config("tv_least_squares,box").baseline)["lam"] == lam
    assert "noise_sigma" not in baseline_configs.get_config("wiener,gaussian_blur").baseline
    with pytest.raises(KeyError, match="unknown baseline 'nope'"):
        baseline_configs.get_config("nope,box")
    with pytest.raises(KeyError, match="unknown task"):
        tasks.get_task("deblur")


def test_paper_preset_is_the_official_setting():
    """DPS configs/*.yaml: 1000 steps, the configs' scales, sigma 0.05, official operators."""
    want_scale = {"sr4": 0.3, "box": 0.5, "random": 0.5, "gaussian_blur": 0.3, "motion_blur": 0.3}
    for task, scale in want_scale.items():
        c = _cfg("dps", task)
        assert c.sampler.hparams.scale == scale
        assert c.sampler.respacing == "1000"
        assert c.sampler.options.clip_denoised is True
        assert c.task.sigma == 0.05 and c.task.reference_size == 256
        sched = schedule_from_meta(DIFFUSION_1000, c.sampler.respacing)
        assert sched.num_steps == 1000 and list(sched.timestep_map) == list(range(1000))
    assert dict(_cfg("dps", "box").task.operator_config) == {
        "mask_len_range": (128, 129),
        "margin": (16, 16),
    }
    assert dict(_cfg("dps", "random").task.operator_config) == {"mask_prob_range": (0.3, 0.7)}
    assert dict(_cfg("dps", "gaussian_blur").task.operator_config) == {
        "kernel_size": 61,
        "std": 3.0,
    }
    assert dict(_cfg("dps", "motion_blur").task.operator_config) == {
        "kernel_size": 61,
        "intensity": 0.5,
    }
    assert dict(_cfg("dps", "sr4").task.operator_config) == {"factor": 4}
    # at 256 px nothing is rescaled
    t = scale_task(_cfg("dps", "gaussian_blur").task.to_dict(), 256)
    assert t["operator_config"] == {"kernel_size": 61, "std": 3.0} and t["length_scale"] == 1


def _parse(argv):
    """What `python -m scripts.reproduce ARGV` sees as FLAGS.config (absl + config_flags)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return fv.config


def test_command_line_overrides_apply():
    c = _parse(
        [
            "prog",
            "--config=configs/dps.py:sr4",
            "--config.model=/x/ffhq_conv",
            "--config.data=/x/ffhq_val",
            "--config.num_images=1000",
            "--config.sampler.respacing=100",
            "--config.sampler.hparams.scale=1.0",
            "--config.task.sigma=0.1",
        ]
    )
    assert (c.model, c.data, c.num_images) == ("/x/ffhq_conv", "/x/ffhq_val", 1000)
    assert c.sampler.respacing == "100" and c.sampler.hparams.scale == 1.0
    assert c.task.sigma == 0.1 and c.task.name == "sr4"
    c = _parse(
        ["prog", "--config=configs/baselines.py:tv_least_squares,box", "--config.baseline.lam=0.5"]
    )
    assert c.method == "tv_least_squares" and c.baseline.lam == 0.5
    with pytest.raises((flags.Error, AttributeError), match="scal"):  # a typo is an error
        _parse(["prog", "--config=configs/dps.py:box", "--config.sampler.hparams.scal=1.0"])


@pytest.mark.parametrize(
    "size,task,want",
    [
        (32, "box", {"mask_len_range": (16, 17), "margin": (2, 2)}),
        (64, "box", {"mask_len_range": (32, 33), "margin": (4, 4)}),
        (32, "gaussian_blur", {"kernel_size": 7, "std": 0.375}),
        (64, "gaussian_blur", {"kernel_size": 15, "std": 0.75}),
        (128, "motion_blur", {"kernel_size": 31, "intensity": 0.5}),
        (32, "sr4", {"factor": 4}),
        (32, "random", {"mask_prob_range": (0.3, 0.7)}),
    ],
)
def test_task_lengths_scale_with_image_size(size, task, want):
    t = scale_task(tasks.get_task(task).to_dict(), size)
    assert t["operator_config"] == want
    assert t["image_size"] == size and t["length_scale"] == size / 256


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_scaled_tasks_build_operators_at_32px(task):
    t = scale_task(tasks.get_task(task).to_dict(), 32)
    op = get_operator(t["operator"], image_shape=(32, 32, 3), **t["operator_config"])
    assert op.image_shape == (32, 32, 3)


def test_demo_config_covers_every_method_on_its_tasks():
    from scripts.demo import plan

    c = demo.get_config()
    pairs = plan(c)
    for task in c.tasks.split(","):
        for m in c.methods.split(","):
            only = c.method_tasks.get(m)
            assert ((m, task) in pairs) == (only is None or task in only.split(",")), (m, task)
        assert ("measurement", task) in pairs
    # every solver of the registry is in the demo (DDIM and DDPM sample the prior, Tweedie is
    # a one-step heuristic); each runs at least on box or deblurring
    solvers = set(SAMPLERS.names()) - {"ddim", "ddpm", "tweedie", "ddnm_plus"}
    assert solvers <= set(c.methods.split(","))
    for m in solvers:
        assert (m, "gaussian_blur") in pairs
    assert ("telea", "box") in pairs and ("telea", "sr2") not in pairs
    assert ("wiener", "gaussian_blur") in pairs and ("bicubic", "sr2") in pairs
    assert int(c.respacing) <= 100  # the demo's short schedule
