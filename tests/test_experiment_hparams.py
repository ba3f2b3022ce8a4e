"""jaxdiff.experiment.build: the task's noise as the methods see it, and the config's
hyperparameters against each method's declared ranges, before anything compiles."""

from __future__ import annotations

import functools
import importlib

import pytest

from jaxdiff.errors import ConfigError
from jaxdiff.experiment import DEMO_PRIOR, NOISE_SIGMA, build


@functools.cache
def _loaded():
    from jaxdiff.models import load_pretrained

    return (DEMO_PRIOR, *load_pretrained(DEMO_PRIOR))


def _config(method: str, task: str = "box"):
    return importlib.import_module(f"configs.{method}").get_config(task)


@pytest.mark.parametrize("method", ["ddrm", "ddnm", "pigdm", "diffpir"])
def test_clean_noise_hands_sigma_zero_to_the_methods_and_the_summary(method):
    """`--config.task.noise=clean` (what the sigma = 0 error recommends) once still gave these
    methods the preset's sigma 0.05, and the summary's effective task said 0.05."""
    c = _config(method)
    c.task.noise = "clean"
    exp = build(c, loaded=_loaded())
    assert exp.task["sigma"] == 0.0  # summary.json's effective_task
    assert exp.default_hparams()[NOISE_SIGMA] == 0.0  # the methods' sigma follows it
    gaussian = build(_config(method), loaded=_loaded())
    assert gaussian.default_hparams()[NOISE_SIGMA] == 0.05


@pytest.mark.parametrize(
    "method, hparam, value, why",
    [
        ("reddiff", "lr", 0.0, r"reddiff \(sampler.hparams\): lr=0 is outside its valid range"),
        ("reddiff", "lr", -1.0, r"lr=-1 is outside its valid range \(0, 10\]"),
        ("reddiff", "lr", 1e30, r"lr=1e\+30 is outside"),
        ("diffpir", "lambda_", 0.0, r"lambda_=0 is outside its valid range \(0, 100\]"),
        ("pigdm", "scale", -5.0, r"scale=-5 is outside its valid range \[0, 100\]"),
        ("ddrm", "eta", 1.5, r"eta=1.5 is outside its valid range \[0, 1\]"),
        ("ddrm", "etta", 0.5, r"unknown hyperparameter\(s\) \['etta'\]; known: eta, eta_b"),
    ],
)
def test_out_of_range_config_hparams_are_refused_before_compiling(method, hparam, value, why):
    c = _config(method)
    c.sampler.hparams[hparam] = value
    with pytest.raises(ConfigError, match=why) as e:
        build(c, loaded=_loaded())
    assert "\n" not in str(e.value)


def test_task_sigma_outside_the_noise_range_is_refused():
    c = _config("ddrm")
    c.task.sigma = 5.0
    with pytest.raises(ConfigError, match=r"task: sigma=5 is outside its valid range \[0, 2\]"):
        build(c, loaded=_loaded())


def test_sweep_values_checked_by_the_experiment():
    exp = build(_config("ddrm"), loaded=_loaded())
    exp.check_hparams({"eta": [0.0, 0.85, 1.0], NOISE_SIGMA: [0.0, 0.1]})
    with pytest.raises(ConfigError, match=r"--sweep \(ddrm\): eta=-1 is outside"):
        exp.check_hparams({"eta": [-1.0, 0.85]}, "--sweep")
    with pytest.raises(ConfigError, match=r"noise_sigma=-0.05 is outside its valid range \[0, 2\]"):
        exp.check_hparams({NOISE_SIGMA: [-0.05]})
