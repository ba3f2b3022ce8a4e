"""jaxdiff.demo at a tiny size: it runs, writes the table and figures, and is deterministic."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from configs import demo as demo_config
from jaxdiff import data as jdata
from jaxdiff.demo import DDPM_PNG, plan, run_config, run_demo
from jaxdiff.samplers import SAMPLERS
from tests.test_reproduce import tiny_model  # noqa: F401 (fixture)


def tiny_demo(model, **over):
    c = demo_config.get_config()
    c.model = str(model)  # adm_tiny: the demo photos at 32x32, like the demo prior
    c.num_images = 1
    c.respacing = "10"
    c.task_respacing = ml_collections.ConfigDict()
    c.tasks = "box"
    c.methods = "sdedit"
    c.baselines = "measurement,telea"
    c.ddpm_samples = 0
    for k, v in over.items():
        setattr(c, k, v)
    return c


@pytest.mark.slow
def test_demo_is_deterministic(tmp_path, tiny_model):  # noqa: F811
    c = tiny_demo(tiny_model, methods="sdedit,ddrm", method_respacing={"ddrm": "skip5"})
    c.ddpm_samples = 2
    a = run_demo(c, tmp_path / "a", progress=False)  # two worker processes
    c.workers = 1
    b = run_demo(c, tmp_path / "b", progress=False)  # every job in this process, in turn
    md = a["table"]["md"].read_text()
    assert md == b["table"]["md"].read_text()  # the same command twice: the same table
    assert (tmp_path / "a" / DDPM_PNG).read_bytes() == (tmp_path / "b" / DDPM_PNG).read_bytes()
    for m in ("sdedit", "ddrm", "telea", "measurement"):
        assert f"| {m} |" in md
    for run in ("sdedit_box", "ddrm_box", "telea_box", "measurement_box"):
        ra = (tmp_path / "a" / run / "results.jsonl").read_text()
        rb = (tmp_path / "b" / run / "results.jsonl").read_text()
        strip = lambda s: [line.split('"seconds"')[0] for line in s.splitlines()]  # noqa: E731
        assert strip(ra) == strip(rb)
    assert jdata.load_image(a["table"]["grid_box"]).ndim == 3
    # the demo's photos are the prior's held-out ones (meta, else configs/train_demo.py)
    from jaxdiff.images import DEMO_HELD_OUT

    assert (tmp_path / "a" / "sdedit_box" / "images" / f"{DEMO_HELD_OUT[0]}_recon.png").exists()


def test_demo_run_configs_carry_the_demo_settings():
    c = demo_config.get_config()
    for method, task in plan(c):
        rc = run_config(c, method, task)
        assert rc.method in (method, f"{method}_plus") and rc.task.name == task
        assert rc.model == "demo" and rc.data == "demo"
        if method in SAMPLERS:
            want = c.method_respacing.get(method, c.task_respacing.get(task, c.respacing))
            assert rc.sampler.respacing == want
    assert run_config(c, "dps", "box").sampler.respacing == "100"
    assert run_config(c, "dps", "sr2").sampler.respacing == c.respacing == "50"
    assert run_config(c, "dps", "box").sampler.hparams.scale == c.hparams.dps.scale.box
    assert (
        run_config(c, "score_ald", "sr4").sampler.hparams.weight == c.hparams.score_ald.weight.sr4
    )
    sd = run_config(c, "sdedit", "random")  # t0's declared bound max_t0 follows it
    assert sd.sampler.hparams.t0 == sd.sampler.options.max_t0 == c.hparams.sdedit.t0.random
    assert run_config(c, "reddiff", "gaussian_blur").sampler.options.init == "adjoint"
    assert run_config(c, "reddiff", "box").sampler.options.init == "pinv"  # the config's own
    assert run_config(c, "ddrm", "box").sampler.respacing == c.method_respacing.ddrm
    # every method the demo runs is a registered sampler or a baseline
    from jaxdiff.baselines import APPLIES

    assert {m for m, _ in plan(c)} <= set(SAMPLERS.names()) | set(APPLIES)
    with pytest.raises(KeyError, match="unknown baseline"):
        plan(tiny_demo("x", baselines="nope"))


@pytest.mark.slow
def test_full_demo_on_the_fixture_model(tmp_path, tiny_model):  # noqa: F811
    c = demo_config.get_config()
    c.model = str(tiny_model)
    c.respacing = "5"
    c.task_respacing = ml_collections.ConfigDict()
    out = run_demo(c, tmp_path / "demo", progress=False)
    md = out["table"]["md"].read_text()
    for task in c.tasks.split(","):
        assert task in md and f"grid_{task}" in out["table"]
    assert jdata.load_image(tmp_path / "demo" / "ddpm_samples.png").ndim == 3


@pytest.mark.slow
def test_the_shipped_demo_shows_its_claims(tmp_path):
    """The README's demo on the shipped prior: DPS beats SDEdit on box inpainting and Gaussian
    deblurring, and every diffusion method beats the measurement itself, on PSNR and LPIPS."""
    from jaxdiff.demo import CLAIMS

    c = demo_config.get_config()
    c.ddpm_samples = 0
    out = run_demo(c, tmp_path / "demo", progress=False)
    claims = out["claims"]
    runs = plan(c)
    expected = sum(len(t or [task for m, task in runs if m == better]) for better, _, t in CLAIMS)
    assert len(claims) == expected  # every claim the demo's runs can test was tested
    failed = [text for text, holds in claims if not holds]
    assert not failed, failed
    # No row is coloured noise: a reconstruction's error carries no more pixel-scale colour
    # (chroma) detail than the measurement's own noise (sigma 0.05 per channel) on the same task,
    # with 25% slack. RED-diff's 20-step box (0.63 of the truth's detail, against the
    # measurement's 0.43) and the 10-step DAPS and 20-step RED-diff blur (0.74 and 1.19, against
    # 0.44) failed this, as did PnP-DM's blur with 10-level SDE prior steps (1.27); the closest
    # row now is DiffPIR's blur (0.52).
    ratio = {pair: colour_noise(tmp_path / "demo" / "_".join(pair)) for pair in runs}
    for (method, task), r in ratio.items():
        if method in SAMPLERS:
            assert r <= 1.25 * ratio["measurement", task], (method, task, r, ratio)


def colour_noise(run) -> float:
    """Mean over a run's images (its PNGs) of |Laplacian(chroma(recon - truth))| /
    |Laplacian(truth)|, chroma = each pixel minus its grey: the pixel-scale colour the
    reconstruction gets wrong, relative to the photo's own detail."""

    def lap(x):
        return np.abs(4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:])

    out = []
    for truth in sorted((run / "images").glob("*_truth.png")):
        x = jdata.load_image(truth)
        e = jdata.load_image(str(truth).replace("_truth.png", "_recon.png")) - x
        out.append(lap(e - e.mean(-1, keepdims=True)).mean() / lap(x).mean())
    return float(np.mean(out))


def test_reddiff_and_daps_rows_run_long_enough_at_official_settings():
    """RED-diff is Adam on the image (a step of about lr per pixel whatever the gradient's
    size) and DAPS anneals: at 20 steps / 10 annealing steps their demo rows were coloured noise.
    The demo runs them at the official hyperparameters with enough steps."""
    from configs import daps as daps_config
    from configs import reddiff as reddiff_config
    from jaxdiff.diffusion import space_timesteps

    c = demo_config.get_config()
    for task in c.method_tasks.reddiff.split(","):
        rc = run_config(c, "reddiff", task)
        official = reddiff_config.get_config(task).sampler.hparams
        assert rc.sampler.hparams.to_dict() == official.to_dict(), task
        assert len(space_timesteps(1000, rc.sampler.respacing)) >= 100, task
    for task in c.method_tasks.daps.split(","):
        rc = run_config(c, "daps", task)
        assert rc.sampler.hparams == daps_config.get_config(task).sampler.hparams, task
        assert int(rc.sampler.respacing) >= 50 and rc.sampler.options.ode_steps >= 2


def test_check_claims_needs_both_metrics_and_skips_what_did_not_run(tmp_path):
    from jaxdiff.demo import check_claims

    rows = ["method,task,metric,mean"]
    for method, task, psnr, lpips in (
        ("dps", "box", 20.0, 0.20),
        ("sdedit", "box", 19.0, 0.19),  # better LPIPS: DPS does not beat it
        ("measurement", "box", 18.0, 0.30),
    ):
        rows += [f"{method},{task},psnr,{psnr}", f"{method},{task},lpips,{lpips}"]
    # a run whose every image diverged writes empty means: skipped, not a crash
    rows += ["dps,sr2,psnr,", "dps,sr2,lpips,", "measurement,sr2,psnr,18.0"]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    got = dict((text.split(":")[0], holds) for text, holds in check_claims(tmp_path / "t.csv"))
    assert got == {
        "dps beats sdedit on box": False,
        "sdedit beats measurement on box": True,
        "dps beats measurement on box": True,
    }


def test_a_preset_scaled_to_a_trivial_blur_warns_and_the_demo_tasks_do_not(caplog):
    """The paper's std 3.0 blur scaled from 256 to 32 px is 0.375 px: a warning names it and the
    way out; at 256 px, and for every task the demo runs at 32 px, nothing is said."""
    import logging

    from jaxdiff import tasks
    from jaxdiff.experiment import scale_task

    with caplog.at_level(logging.WARNING, logger="jaxdiff.tasks"):
        t = scale_task(tasks.get_task("gaussian_blur").to_dict(), 32)
    assert t["operator_config"]["std"] == 0.375
    (record,) = caplog.records
    assert "0.375 px" in record.getMessage() and "reference_size=32" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxdiff.tasks"):
        scale_task(tasks.get_task("gaussian_blur").to_dict(), 256)
        c = demo_config.get_config()
        for method, task in plan(c):
            scale_task(run_config(c, method, task).task.to_dict(), 32)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


_THREADS = """
import threading, numpy as np
from configs import demo as demo_config
from jaxdiff.demo import run_config
from jaxdiff.experiment import build
from jaxdiff.runner import BatchRunner, image_keys

cfg = run_config(demo_config.get_config(), "sdedit", "box")
cfg.sampler.respacing = "100"  # SDEdit: 30 steps, long enough for the two to overlap
runner = BatchRunner(build(cfg), 3)
keys, x = image_keys(0, range(3)), np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3))
alone = runner(keys, x)["x_hat"]
together = []
threads = [threading.Thread(target=lambda: together.append(runner(keys, x)["x_hat"])) for _ in "ab"]
[t.start() for t in threads]
[t.join() for t in threads]
print(max(float(np.abs(out - alone).max()) for out in together))
"""


@pytest.mark.slow  # a demo-prior program compiled and run three times, in a fresh process (~25 s)
def test_programs_in_threads_give_their_results_alone():
    """XLA:CPU programs executing at the same time change each other's float results (one device,
    XLA's default optimisation: not this test process's emulated devices, where they do not); the
    batching path runs one at a time (jaxdiff.sharding.EXECUTION), so the demo's threads cannot."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _THREADS], capture_output=True, text=True, env=env, check=True
    )
    assert float(out.stdout.strip()) == 0.0


def test_a_bad_compiler_level_is_refused_before_anything_is_written(tmp_path, tiny_model):  # noqa: F811
    c = tiny_demo(tiny_model, xla_backend_optimization_level=5)
    with pytest.raises(ValueError, match="optimisation level must be 0, 1, 2 or 3, got 5"):
        run_demo(c, tmp_path / "demo", progress=False)
    assert not (tmp_path / "demo").exists()


_CTRL_C = """
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
sys.argv = ["demo"] + sys.argv[1:]
runpy.run_module("scripts.demo", run_name="__main__")
"""


def _children(pid: int) -> list[int]:
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_stops_the_demo_and_its_workers_at_once_with_one_line(tmp_path, tiny_model):  # noqa: F811
    workdir = tmp_path / "demo"
    args = [
        f"--workdir={workdir}",
        "--noprogress",
        f"--config.model={tiny_model}",
        "--config.methods=sdedit,ddrm,ddnm,pigdm,dps",
        "--config.tasks=box",
        "--config.num_images=1",
        "--config.ddpm_samples=0",
        "--config.baselines=measurement",
    ]
    env = {k: v for k, v in os.environ.items() if k != "JAXDIFF_COMPILATION_CACHE"}
    env["JAXDIFF_COMPILATION_CACHE"] = "off"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C, *args],
        start_new_session=True,  # its own process group, which Ctrl-C signals as a whole
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(workdir.glob("*/config.json")):  # runs under way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 2  # the two worker processes (and multiprocessing's tracker)
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - t < 15  # not after the runs under way and queued
    assert proc.returncode == 130, err[-2000:]
    assert (
        err.strip().splitlines()[-1]
        == "demo: interrupted (SIGINT); what was already written is kept"
    )
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in workers):
        time.sleep(0.2)
    assert not [_cmdline(pid) for pid in workers if _running(pid)]  # none left running
    started = [p.parent.name for p in workdir.glob("*/config.json")]
    assert (workdir / "config.json").exists() and started  # what was written is kept
