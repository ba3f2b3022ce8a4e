"""The commands' persistent compilation cache (jaxdiff/compile_cache.py): where it goes, how it
is moved or turned off, and that a second run of a command reuses the compiled programs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from jaxdiff import compile_cache

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def test_the_cache_folder_follows_the_environment_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "root"))
    assert compile_cache.resolve() == tmp_path / "root" / "xla"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "moved"))
    assert compile_cache.resolve() == tmp_path / "moved"
    for off in ("off", "0", "False", "no"):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.resolve() is None
        assert compile_cache.enable() is None
    assert compile_cache.resolve(str(tmp_path / "flag")) == tmp_path / "flag"  # the flag wins
    assert compile_cache.resolve("off") is None


def test_a_folder_that_cannot_be_made_leaves_the_cache_off(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="compilation cache off"):
        assert compile_cache.enable(str(blocker / "xla")) is None


def _reproduce(workdir, model, data, cache) -> float:
    args = [
        sys.executable, "-m", "scripts.reproduce", "--config=configs/dps.py:box",
        f"--workdir={workdir}", f"--config.model={model}", f"--config.data={data}",
        "--config.sampler.respacing=3", "--config.num_images=2", "--progress=false",
        f"--compilation_cache={cache}",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - t0


@pytest.mark.slow  # two runs of the driver in new processes (~1 min)
def test_a_second_run_reuses_the_compiled_programs(tmp_path):
    from jaxdiff.convert.core import convert

    model = tmp_path / "adm_tiny"
    convert(FIXTURES / "adm_tiny.pt", model, config=FIXTURES / "adm_tiny.json", progress=False)
    data = tmp_path / "photos"
    data.mkdir()
    for name in ("op_image0_astronaut.png", "metric_clean_coffee.png"):
        shutil.copy(FIXTURES / name, data / name)
    cache = tmp_path / "xla"
    first = _reproduce(tmp_path / "first", model, data, cache)
    assert any(cache.iterdir()), "nothing was cached"
    second = _reproduce(tmp_path / "second", model, data, cache)
    assert second <= 0.5 * first, (first, second)

    def results(d):
        return [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]

    for a, b in zip(results(tmp_path / "first"), results(tmp_path / "second"), strict=True):
        assert a["metrics"] == b["metrics"] and a["image"] == b["image"]
