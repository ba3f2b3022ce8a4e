"""Configs: every method x task preset builds, overrides apply, the paper preset is the paper's,
the get_config argument parser (jaxdiff.config_lib.parse_arg)."""

from __future__ import annotations

import inspect

import pytest
from absl import flags
from ml_collections import config_flags

from jaxdiff import config_lib, tasks
from jaxdiff.baselines import APPLIES, BASELINES
from jaxdiff.diffusion import schedule_from_meta
from jaxdiff.experiment import scale_task
from jaxdiff.operators import get_operator
from jaxdiff.samplers import SAMPLERS

baseline_configs = config_lib.config_module("baselines")
demo = config_lib.config_module("demo")
# every registered sampler with a config file of its own (configs/ddnm.py also runs ddnm_plus)
METHODS = tuple(m for m in SAMPLERS.names() if m in config_lib.config_names())
# Each task preset's operator (jaxdiff.operators), written out here: the DPS configs' tasks
# and the project's own (sr2, denoise, colorize).
OPERATOR = {
    "box": "inpaint_box",
    "random": "inpaint_random",
    "gaussian_blur": "gaussian_blur",
    "motion_blur": "motion_blur",
    "sr4": "super_resolution",
    "sr2": "super_resolution",
    "denoise": "denoise",
    "colorize": "colorize",
    "phase_retrieval": "phase_retrieval",
}
NO_SVD = ("motion_blur", "phase_retrieval")  # operators with no SVD form
NONLINEAR = ("phase_retrieval",)
MASK_OPERATORS = ("inpaint_box", "inpaint_random")  # pixel masks (RePaint's "mask" need)
DIFFUSION_1000 = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "variance_type": "learned_range",
    "schedule_dtype": "float64",
}


def _cfg(method, arg):
    return config_lib.config_module(method).get_config(arg)


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
    refused = refused or ("mask" in needs and OPERATOR[task] not in MASK_OPERATORS)
    if refused:
        with pytest.raises(ValueError, match=task):
            _cfg(method, task)
        return
    c = _cfg(method, task)
    assert c.method in (method, f"{method}_plus") and c.task.name == task
    assert c.task.noise == "gaussian" and c.task.sigma == 0.05
    if "latent_prior" in needs:  # no latent prior is bundled: the user names one
        assert c.data == "demo"
    else:
        assert c.model == "demo" and c.data == "demo"  # works out of the box
    assert c.task.operator == OPERATOR[task]


def test_task_presets_are_the_listed_ones():
    assert set(tasks.TASKS) == set(OPERATOR)
    assert set(tasks.PAPER_TASKS) == {"sr4", "box", "random", "gaussian_blur", "motion_blur"}


@pytest.mark.parametrize("name,task", [(b, t) for b, ts in APPLIES.items() for t in ts])
def test_every_baseline_task_preset_builds(name, task):
    c = baseline_configs.get_config(f"{name},{task}")
    assert c.method == name and c.task.name == task


def test_baselines_apply_where_their_operators_are():
    """APPLIES follows the operators each baseline declares; spot checks written out here."""
    assert set(APPLIES) == set(BASELINES.names()) | {"measurement"}
    assert set(APPLIES["measurement"]) == set(OPERATOR)
    assert APPLIES["telea"] == APPLIES["navier_stokes"] == ("box", "random")
    assert APPLIES["wiener"] == ("gaussian_blur", "motion_blur")
    assert APPLIES["bicubic"] == ("sr4", "sr2")
    assert "colorize" in APPLIES["adjoint"] and "colorize" not in APPLIES["zero_fill"]
    assert not any("phase_retrieval" in APPLIES[b] for b in BASELINES.names())  # nonlinear
    for task, name in baseline_configs.DEFAULT.items():  # each task's default applies to it
        assert task in APPLIES[name], (task, name)


def test_baseline_default_per_task_and_errors():
    assert baseline_configs.get_config("gaussian_blur").method == "wiener"
    assert baseline_configs.get_config("sr4").method == "bicubic"
    # keyword defaults are copied from the baseline, so --config.baseline.lam=... can override
    lam = inspect.signature(BASELINES.get("tv_least_squares")).parameters["lam"].default
    assert dict(baseline_configs.get_config("tv_least_squares,box").baseline)["lam"] == lam
    assert "noise_sigma" not in baseline_configs.get_config("wiener,gaussian_blur").baseline
    with pytest.raises(ValueError, match="configs/baselines.py: 'nope'.*baseline: one of"):
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
    from jaxdiff.demo import plan

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
    # the demo prior is pixel-space: the latent methods need a latent prior folder
    solvers -= {n for n in SAMPLERS.names() if "latent_prior" in SAMPLERS.get(n).needs}
    assert solvers <= set(c.methods.split(","))
    for m in solvers:
        assert (m, "box") in pairs or (m, "gaussian_blur") in pairs, m
    assert ("telea", "box") in pairs and ("wiener", "gaussian_blur") in pairs
    assert c.tasks == demo.TASKS == "box,gaussian_blur"  # the default: every method's row
    assert int(c.respacing) <= 100  # the demo's short schedule
    # all four tuned tasks: DPS on each, Score-ALD on SR too, each baseline where it applies
    c.tasks = demo.ALL_TASKS
    more = set(plan(c)) - set(pairs)
    assert {("dps", "random"), ("dps", "sr2"), ("score_ald", "sr2")} <= more
    assert {("bicubic", "sr2"), ("telea", "random"), ("measurement", "random")} <= more
    assert ("telea", "sr2") not in more and all(t in ("random", "sr2") for _, t in more)


def test_parse_arg_positional_keyword_and_boolean():
    spec = {"preset": config_lib.Choice("demo", ("demo", "tiny")), "steps": 10, "lr": 0.1}
    spec["learn_sigma"] = False
    a = config_lib.parse_arg(None, "x.py", **spec)
    assert (a.preset, a.steps, a.lr, a.learn_sigma) == ("demo", 10, 0.1, False)
    a = config_lib.parse_arg("tiny,5,learn_sigma", "x.py", **spec)
    assert (a.preset, a.steps, a.lr, a.learn_sigma) == ("tiny", 5, 0.1, True)
    a = config_lib.parse_arg("lr=0.5, learn_sigma=false, preset=tiny", "x.py", **spec)
    assert (a.preset, a.steps, a.lr, a.learn_sigma) == ("tiny", 10, 0.5, False)
    assert isinstance(a.lr, float) and isinstance(config_lib.parse_arg("3", "x.py", n=1).n, int)


@pytest.mark.parametrize(
    "arg,match",
    [
        ("speed=3", "configs/x.py: unknown key 'speed'.*known: preset, steps"),
        ("steps=many", "configs/x.py: steps='many' is not a int"),
        ("huge", "configs/x.py: .huge.*preset: one of demo, tiny; steps: int"),
        ("demo,1,2", "configs/x.py: too many values"),
        ("steps=1,steps=2", "configs/x.py: steps given twice"),
    ],
)
def test_parse_arg_errors_name_the_file_and_key(arg, match):
    spec = {"preset": config_lib.Choice("demo", ("demo", "tiny")), "steps": 10}
    with pytest.raises(ValueError, match=match):
        config_lib.parse_arg(arg, "/somewhere/x.py", **spec)


def test_every_documented_config_spelling():
    """The spellings of the README, docs and tests, through config_flags as the scripts parse."""
    assert _parse(["prog", "--config=configs/dps.py:box"]).task.name == "box"
    assert _parse(["prog", "--config=configs/dps.py:task=sr4"]).task.name == "sr4"
    assert _parse(["prog", "--config=configs/dps.py"]).task.name == "box"
    c = _parse(["prog", "--config=configs/baselines.py:telea,box"])
    assert (c.method, c.task.name) == ("telea", "box")
    c = _parse(["prog", "--config=configs/baselines.py:baseline=wiener,task=motion_blur"])
    assert (c.method, c.task.name) == ("wiener", "motion_blur")
    assert _parse(["prog", "--config=configs/baselines.py:box"]).method == "telea"
    c = _parse(["prog", "--config=configs/train_demo.py:demo,learn_sigma"])
    assert (c.diffusion["variance_type"], c.model.config.out_channels) == ("learned_range", 6)
    c = _parse(["prog", "--config=configs/train_demo.py:tiny"])
    assert c.preset == "tiny" and c.data.resolution == 8
    assert c.data.held_out == ("astronaut", "chelsea", "coffee")  # the demo prior's (README)
    with pytest.raises(flags.IllegalFlagValueError, match="configs/dps.py: 'deblur'"):
        _parse(["prog", "--config=configs/dps.py:deblur"])
    with pytest.raises(flags.IllegalFlagValueError, match="configs/demo.py: too many values"):
        _parse(["prog", "--config=configs/demo.py:fast"])
