"""Two local CPU processes on jax.distributed run `scripts.reproduce` together: the same
per-image results and summary as one process, every file written once, and a resume that
crosses process counts (images finished by one process are not run again by two)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jaxdiff.runs import run
from jaxdiff.workdir import RESULTS
from tests.test_reproduce import REPO, config, image_dir, records, tiny_model  # noqa: F401

METHOD, TASK, STEPS = "score_ald", "random", "3"  # no network gradient: quick to compile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(workdir, model, data, timeout=600, script="reproduce", extra=()):
    """`python -m scripts.reproduce` (or `script`) as processes 0 and 1 of 2, one CPU device
    each, batch 2: one image per device and step, as in the one-process run (8 emulated
    devices, batch 2 rounded to 8), so the per-device programs match."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [
        sys.executable,
        "-m",
        f"scripts.{script}",
        *extra,
        f"--config=configs/{METHOD}.py:{TASK}",
        f"--workdir={workdir}",
        f"--config.model={model}",
        f"--config.data={data}",
        f"--config.sampler.respacing={STEPS}",
        "--config.batch_size=2",
        "--noprogress",
        f"--coordinator=localhost:{port}",
        "--num_processes=2",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, f"--process_id={i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{err[-3000:]}"
    # what the processes printed, without the CPU collectives' own connection line
    return [
        "".join(ln for ln in o.splitlines(True) if not ln.startswith("[Gloo]")) for o, _ in outs
    ]


def _one_process(workdir, model, data):
    c = config(METHOD, TASK, model, data, respacing=STEPS)
    c.batch_size = 2
    return run(c, workdir, progress=False)


def test_two_processes_equal_one(tmp_path, tiny_model, image_dir):  # noqa: F811
    one = _one_process(tmp_path / "one", tiny_model, image_dir)
    printed = _two_processes(tmp_path / "two", tiny_model, image_dir)
    assert "3 images" in printed[0] and printed[1] == ""  # only the first process reports
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) == 3
    for name in a:
        assert a[name]["index"] == b[name]["index"]
        assert a[name]["image_sha256"] == b[name]["image_sha256"]
        for k, v in a[name]["metrics"].items():
            assert b[name]["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (name, k)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["num_images"] == one["num_images"] == 3
    assert list(two["skipped"]) == list(one["skipped"]) == ["img0a_corrupt.png"]
    assert "2 processes" in two["devices"]
    for k in ("psnr", "ssim", "lpips"):
        assert two["metrics"][k]["mean"] == pytest.approx(one["metrics"][k]["mean"], rel=1e-5)
    # every output written once, no file from a second writer (no temporaries left either)
    files = sorted(p.name for p in (tmp_path / "two" / "images").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one" / "images").iterdir())
    assert len((tmp_path / "two" / RESULTS).read_text().splitlines()) == 3


@pytest.mark.slow
def test_two_processes_resume_what_one_process_started(tmp_path, tiny_model, image_dir):  # noqa: F811
    c = config(METHOD, TASK, tiny_model, image_dir, respacing=STEPS)
    c.num_images = 1  # one image finished (the corrupt file sorted first is skipped)
    run(c, tmp_path / "w", progress=False)
    before = records(tmp_path / "w")
    assert len(before) == 1
    _two_processes(tmp_path / "w", tiny_model, image_dir)
    after = records(tmp_path / "w")
    assert len(after) == 3
    (name,) = before
    assert after[name] == before[name]  # not run again (its seconds and metrics are the same)


@pytest.mark.slow
def test_two_process_sweep_equals_one(tmp_path, tiny_model, image_dir):  # noqa: F811
    from jaxdiff.sweep import run_sweep

    c = config(METHOD, TASK, tiny_model, image_dir, respacing=STEPS)
    c.batch_size = 2
    one = run_sweep(c, tmp_path / "one", "weight", [0.5, 2.0], progress=False)
    _two_processes(
        tmp_path / "two", tiny_model, image_dir, script="sweep", extra=["--sweep=weight:0.5,2"]
    )
    two = json.loads((tmp_path / "two" / "sweep.json").read_text())
    for r1, r2 in zip(one["rows"], two["rows"], strict=True):
        assert r1["value"] == r2["value"]
        for k in ("psnr", "ssim", "lpips"):
            assert r2[k]["mean"] == pytest.approx(r1[k]["mean"], rel=1e-5), (r1["value"], k)
    lines = (tmp_path / "two" / RESULTS).read_text().splitlines()
    assert len(lines) == 3  # every image once, with every value's metrics
