"""The driver never fails silently: a bad config or input fails before anything is written, one
workdir has one writer, every input file gets its own outputs and is recomputed when its content
changes, outputs follow the umask, and diverged images are named and kept out of the means."""

# ruff: noqa: F811 (pytest fixtures imported from test_reproduce)
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.errors import ConfigError, RunLockedError
from jaxdiff.runs import run
from jaxdiff.workdir import RESULTS, WorkdirLock, image_path
from tests.test_reproduce import FIXTURES, PHOTOS, REPO, config, records, tiny_model  # noqa: F401


@pytest.fixture
def two_images(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(FIXTURES / PHOTOS[0], d / "img.png")
    jdata.save_png(d / "other.png", jdata.load_image(FIXTURES / PHOTOS[1], 32))
    return d


def _cfg(model, data, **over):
    return config("dps", "box", model, data, respacing="2", **over)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"batch_size": -2}, "batch_size=-2 must be an integer >= 0"),
        ({"seed": 2**32}, r"seed=4294967296 must be an integer in \[0, 2\^32\)"),
        ({"metrics.lpips_net": "vgg19"}, "metrics.lpips_net='vgg19'"),
        ({"metrics.range": "foo"}, "metrics.range='foo' must be 'clip' or 'minmax'"),
        ({"sampler.respacing": "ten"}, "respacing 'ten'"),
    ],
)
def test_a_bad_config_fails_before_anything_is_written(
    tmp_path, tiny_model, two_images, over, match
):
    c = _cfg(tiny_model, two_images)
    for key, value in over.items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    with pytest.raises((ConfigError, ValueError), match=match):
        run(c, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "config.json").exists()
    assert not (tmp_path / "w" / RESULTS).exists()


@pytest.mark.slow  # 10-50 s: kept out of the default run's 10 minutes
def test_an_empty_folder_writes_nothing_and_the_corrected_command_runs(
    tmp_path, tiny_model, two_images
):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no decodable images"):
        run(_cfg(tiny_model, tmp_path / "empty"), tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "config.json").exists()
    s = run(_cfg(tiny_model, two_images), tmp_path / "w", progress=False)  # same workdir
    assert s["num_images"] == 2


def test_one_writer_per_workdir(tmp_path, tiny_model, two_images):
    with WorkdirLock(tmp_path / "w"):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            run(_cfg(tiny_model, two_images), tmp_path / "w", progress=False)
    with WorkdirLock(tmp_path / "w"):  # released: the next writer takes it (every run test
        pass  # runs past a lock it takes; a second full run here only cost time)


def test_outputs_per_input_file_content_fingerprints_and_umask(tmp_path, tiny_model, two_images):
    shutil.copy(FIXTURES / PHOTOS[2], two_images / "img.jpg")  # same stem as img.png
    c = _cfg(tiny_model, two_images)
    old = os.umask(0o022)
    try:
        run(c, tmp_path / "w", progress=False)
    finally:
        os.umask(old)
    recs = records(tmp_path / "w")
    assert sorted(recs) == ["img.jpg", "img.png", "other.png"]
    stems = {n: r["output"] for n, r in recs.items()}
    assert stems == {"img.jpg": "img_jpg", "img.png": "img_png", "other.png": "other"}
    truth = {n: jdata.load_image(image_path(tmp_path / "w", n, "truth", stems)) for n in recs}
    assert np.abs(truth["img.jpg"] - truth["img.png"]).max() > 0.1  # two images, two sets
    for f in ("results.jsonl", "config.json", "summary.json", "images/other_recon.png"):
        assert (tmp_path / "w" / f).stat().st_mode & 0o777 == 0o644, f
    # the same name with another picture: recomputed on resume, not trusted by its name
    before = recs["other.png"]
    jdata.save_png(two_images / "other.png", np.flip(jdata.load_image(two_images / "other.png"), 0))
    run(c, tmp_path / "w", progress=False)
    after = records(tmp_path / "w")
    assert after["other.png"]["image_sha256"] != before["image_sha256"]
    assert after["other.png"]["metrics"] != before["metrics"]
    assert after["img.png"] == recs["img.png"]  # unchanged images are not redone


def test_corrupt_run_files_are_named(tmp_path, tiny_model, two_images):
    c = _cfg(tiny_model, two_images)
    run(c, tmp_path / "w", progress=False)
    (tmp_path / "w" / RESULTS).write_text('{"image": "img.png", "ind')
    with pytest.raises(ConfigError, match=r"results.jsonl: line 1 is not a result record"):
        run(c, tmp_path / "w", progress=False)
    (tmp_path / "w" / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"config.json: corrupt JSON"):
        run(c, tmp_path / "w", progress=False)


def test_diverged_images_are_named_and_kept_out_of_the_means(
    tmp_path,
    tiny_model,
    two_images,
):
    from jaxdiff.experiment import build

    c = _cfg(tiny_model, two_images)
    exp = build(c)  # past the config's range check: inf in float32, the first step non-finite
    exp.method.hparams["scale"] = 1e39
    s = run(c, tmp_path / "w", exp=exp, progress=False)
    assert sorted(s["diverged"]) == ["img.png", "other.png"]
    assert s["metrics"]["psnr"]["n"] == 0 and s["metrics"]["psnr"]["mean"] is None
    assert "diverged" in (tmp_path / "w" / "summary.md").read_text()
    assert all(r["diverged_at"] >= 0 for r in records(tmp_path / "w").values())


def _reproduce(*args):
    return subprocess.run(
        [sys.executable, "-m", "scripts.reproduce", *map(str, args), "--noprogress"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_command_line_errors_are_one_line_with_exit_2(tmp_path, two_images):
    r = _reproduce(
        "--config=configs/dps.py:box",
        f"--config.data={two_images}",
        "--config.batch_size=-2",
        f"--workdir={tmp_path / 'w'}",
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("reproduce: error: invalid config")
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_run_with_diverged_images_exits_3_after_writing_everything(tmp_path, two_images):
    r = _reproduce(
        "--config=configs/score_ald.py:box",  # the top of its weight range, 20 steps
        f"--config.data={two_images}",
        "--config.sampler.respacing=20",
        "--config.sampler.hparams.weight=100",
        f"--workdir={tmp_path / 'w'}",
    )
    assert r.returncode == 3, r.stderr
    assert "2 of 2 images diverged" in r.stdout
    assert len((tmp_path / "w" / RESULTS).read_text().splitlines()) == 2
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["diverged"]


@pytest.mark.slow
def test_batch_size_moves_a_result_by_float32_rounding_only(tiny_model):
    """The stated guarantee (README, 'When something goes wrong'): bitwise at equal batch size
    and device count (tests/test_reproduce.py), and across batch sizes within float32 rounding
    amplified by the chain: 10 DPS steps on the fixture UNet, image 0 alone vs in a batch of 4."""
    import jax

    from jaxdiff.diffusion import schedule_from_meta
    from jaxdiff.models import load_pretrained, model_fn
    from jaxdiff.operators import get_noise, get_operator
    from jaxdiff.samplers import batched, get_sampler

    model, params, meta = load_pretrained(tiny_model)
    op = get_operator("gaussian_blur", image_shape=(32, 32, 3), kernel_size=9, std=1.0)
    sample = get_sampler("dps")(
        model_fn(model),
        schedule_from_meta(meta["diffusion"], "10"),
        operator=op,
        noise=get_noise("gaussian", sigma=0.05),
        scale=0.5,
    )
    run_b = jax.jit(batched(sample))
    keys = jax.random.split(jax.random.key(0), 4)
    x = np.stack([jdata.load_image(FIXTURES / p, 32) for p in (*PHOTOS, PHOTOS[0])])
    op_params = jax.vmap(op.sample)(keys)
    y = jax.vmap(op.apply)(op_params, x)
    first = jax.tree.map(lambda a: a[:1], op_params)
    one = np.asarray(run_b(params, keys[:1], y[:1], first).x0[0])
    four = np.asarray(run_b(params, keys, y, op_params).x0[0])
    diff = np.abs(one - four)
    # measured: max 1.7e-5, mean 9e-7 (enough to flip a few 8-bit pixels by 1/255)
    assert diff.max() < 2e-4 and diff.mean() < 1e-5


# --- a workdir belongs to one experiment ---------------------------------------------------------
COMMANDS = ("reproduce", "sweep", "demo", "train")


@pytest.mark.parametrize("first", COMMANDS)
@pytest.mark.parametrize("second", COMMANDS)
def test_a_workdir_refuses_another_command(tmp_path, first, second):
    """Every pair: the folder of one command is refused by another (one line naming both), by
    the same command with another config (naming the difference), resumed by the same."""
    from jaxdiff.workdir import CONFIG, claim

    cfg = {"seed": 0, "sampler": {"respacing": "3"}}
    claim(tmp_path, first, cfg)
    before = (tmp_path / CONFIG).read_text()
    if first == second:
        claim(tmp_path, second, cfg)  # a resume
        with pytest.raises(ConfigError, match=r"sampler.respacing: '3' -> '4'"):
            claim(tmp_path, second, {"seed": 0, "sampler": {"respacing": "4"}})
    else:
        with pytest.raises(ConfigError, match=f"results of `{first}`, not `{second}`"):
            claim(tmp_path, second, cfg)
    assert (tmp_path / CONFIG).read_text() == before


def test_folders_written_before_the_claim_are_recognised(tmp_path):
    from jaxdiff.workdir import claim

    old = tmp_path / "reproduce"  # config.json without a command: the driver wrote it
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"fingerprint": "x", "config": {}}))
    with pytest.raises(ConfigError, match="results of `reproduce`, not `sweep`"):
        claim(old, "sweep", {})
    sweep = tmp_path / "sweep"  # a sweep's files without config.json
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    (sweep / RESULTS).write_text("{}\n")
    with pytest.raises(ConfigError, match="results of `sweep`, not `reproduce`"):
        claim(sweep, "reproduce", {})
    assert (sweep / RESULTS).read_text() == "{}\n"


def test_a_sweep_does_not_overwrite_a_reproduce_workdir(tmp_path, tiny_model, two_images):
    """The reported loss: `sweep` pointed at a `reproduce` workdir replaced its results.jsonl;
    now it stops before writing, and `reproduce` stops on a sweep's folder."""
    from jaxdiff.sweep import run_sweep
    from jaxdiff.workdir import claim, config_dict

    c = _cfg(tiny_model, two_images)
    claim(tmp_path / "w", "reproduce", config_dict(c))  # as a finished run leaves it
    (tmp_path / "w" / "results.jsonl").write_text('{"image": "a.png"}\n')
    before = {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.name != ".lock"}
    with pytest.raises(ConfigError, match="results of `reproduce`, not `sweep`"):
        run_sweep(c, tmp_path / "w", "scale", [0.5, 1.0], progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "w").rglob("*") if p.name != ".lock"} == before
    # a sweep's folder, the same sweep with other values, and reproduce on it
    claim(tmp_path / "s", "sweep", {**config_dict(c), "sweep": {"scale": [0.5, 2.0]}})
    with pytest.raises(ConfigError, match="sweep.scale"):
        run_sweep(c, tmp_path / "s", "scale", [0.5, 1.0], progress=False)
    with pytest.raises(ConfigError, match="results of `sweep`, not `reproduce`"):
        run(c, tmp_path / "s", progress=False)


def test_demo_and_train_claim_their_workdir(tmp_path, tiny_model):
    from configs import train_demo
    from jaxdiff.demo import run_demo
    from jaxdiff.training import train
    from jaxdiff.workdir import claim
    from tests.test_demo import tiny_demo

    claim(tmp_path / "r", "reproduce", {})
    with pytest.raises(ConfigError, match="results of `reproduce`, not `demo`"):
        run_demo(tiny_demo(tiny_model), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="results of `reproduce`, not `train`"):
        train(train_demo.get_config("tiny"), tmp_path / "r", log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json"]


# --- results are valid JSON; a bad record names its file and line --------------------------------
def test_an_exact_reconstruction_is_counted_and_written_as_valid_json(tmp_path):
    from types import SimpleNamespace

    from jaxdiff.summary import headline, summarize, write_summary
    from jaxdiff.workdir import ResultStore, json_safe

    def no_constants(x):
        raise ValueError(f"not JSON: {x}")

    store = ResultStore(tmp_path, {"seed": 0})
    recs = [
        {"image": "a.png", "index": 0, "seed": 0, "seconds": 1.0, "diverged_at": -1,
         "metrics": {"psnr": 30.123456, "ssim": 0.9, "lpips": 0.1}},
        {"image": "b.png", "index": 1, "seed": 0, "seconds": 1.0, "diverged_at": -1,
         "metrics": {"psnr": float("inf"), "ssim": 1.0, "lpips": 0.0}},
    ]  # fmt: skip
    store.add([json_safe(r) for r in recs])
    lines = [json.loads(ln, parse_constant=no_constants) for ln in open(tmp_path / RESULTS)]
    assert lines[1]["metrics"]["psnr"] is None and lines[1]["exact"] is True
    exp = SimpleNamespace(
        method=SimpleNamespace(name="m", kind="k", info={}),
        task={"name": "t", "operator": "o", "operator_config": {}, "noise": "gaussian",
              "sigma": 0.05, "length_scale": 1.0, "image_size": 32},
        model_dir="model", meta={}, image_size=32,
    )  # fmt: skip
    s = summarize(exp, ["a.png", "b.png"], {}, store, {"sampler": {"hparams": {}},
                  "metrics": {"lpips_net": "vgg"}}, 0.0, 1.0)  # fmt: skip
    assert s["exact"] == ["b.png"] and s["metrics"]["psnr"]["n"] == 1
    assert s["metrics"]["ssim"]["n"] == 2  # the exact image counts in the other metrics
    write_summary(tmp_path, s)
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_constants)
    assert "exact reconstructions" in (tmp_path / "summary.md").read_text()
    line = headline(s)  # the digits the metrics carry, not 16
    assert "PSNR 30.12 dB (+1 exact" in line and "SSIM 0.950" in line, line
    # a results.jsonl of older runs, with a bare Infinity, is read and rewritten as valid JSON
    (tmp_path / RESULTS).write_text(json.dumps(recs[1]) + "\n")
    assert "Infinity" in (tmp_path / RESULTS).read_text()
    store = ResultStore(tmp_path, {"seed": 0})
    store.add([])
    json.loads((tmp_path / RESULTS).read_text(), parse_constant=no_constants)


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"image": "a.png", "index": 0, "seed": 0}', "no 'metrics'"),
        ('{"image": "a.png", "index": "0", "seed": 0, "metrics": {}}', "'index' is '0', not int"),
        ('{"image": "a.png", "index": 0, "seed": 0, "metrics": {"lpips": "x"}}', "metrics.lpips"),
        ("[1, 2]", "a list, not an object"),
    ],
)
def test_a_bad_result_line_names_its_file_and_line(tmp_path, line, match):
    from jaxdiff.workdir import ResultStore

    ResultStore(tmp_path, {"seed": 0})
    good = '{"image": "b.png", "index": 1, "seed": 0, "metrics": {"psnr": 1.0}}'
    (tmp_path / RESULTS).write_text(good + "\n" + line + "\n")
    with pytest.raises(
        ConfigError, match=rf"results.jsonl: line 2 is not a result record .*{match}"
    ):
        ResultStore(tmp_path, {"seed": 0})


def test_task_settings_are_checked_against_the_operator():
    from configs import dps
    from jaxdiff.runs import validate_config

    c = dps.get_config("sr2")
    c.task.operator = "motion_blur"  # sr2's `factor` is left over
    with pytest.raises(ConfigError, match="task.operator_config.factor: not a setting of"):
        validate_config(c)
    c.task.operator = "warp"
    with pytest.raises(ConfigError, match="task.operator='warp'"):
        validate_config(c)
