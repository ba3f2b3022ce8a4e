"""Every console command ends bad input with one line `PROG: error: ...` on stderr and exit
status 2, whether the error is found while the flags and config files are parsed or later:
reproduce, sweep, table, demo, train, benchmark (absl, through jaxdiff.cli.run), convert and
parity (argparse). Several bad inputs of one absl command run in one subprocess (each script
defines its flags in the process-wide absl registry), through `cli.run(main, argv)`."""

# ruff: noqa: F811 (pytest fixtures imported from test_reproduce)
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys

import pytest

from tests.test_reproduce import REPO, tiny_model  # noqa: F401

_DRIVER = """
import contextlib, importlib, io, json, sys
from absl import flags
from jaxdiff import cli
name, cases = sys.argv[1], json.loads(sys.argv[2])
mod = importlib.import_module(f"scripts.{name}")
out = []
for argv in cases:
    for flag in [f for f in flags.FLAGS if f.startswith("config.")]:  # the last config's keys
        delattr(flags.FLAGS, flag)
    flags.FLAGS.unparse_flags()
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            sys.argv = [f"{name}.py", *argv]  # config_flags reads the overrides there
            cli.run(mod.main, list(sys.argv), default_config=getattr(mod, "DEFAULT_CONFIG", None))
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def _absl_command(name: str, cases: list[list[str]]) -> list[tuple[int, str]]:
    r = subprocess.run(
        [sys.executable, "-c", _DRIVER, name, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", **__import__("os").environ},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def _one_line(prog: str, code: int, err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.fixture
def busy_port():
    """A port with a listener on it: what process 0's coordinator would collide with."""
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        yield s.getsockname()[1]


def test_reproduce_bad_input(tmp_path, busy_port):
    w = f"--workdir={tmp_path / 'w'}"
    dist = ["--config=configs/dps.py:box", w, "--num_processes=2"]
    cases = {
        # config-file errors raised while absl parses the flags
        "configs/ddrm.py: 'sr8'": ["--config=configs/ddrm.py:sr8", w],
        "task 'motion_blur' has no operator in SVD form": [
            "--config=configs/ddrm.py:motion_blur",
            w,
        ],
        "scal": ["--config=configs/dps.py:box", "--config.sampler.hparams.scal=1", w],
        "unknown config 'nope.py'": ["--config=nope.py", w],
        # a preset's leftover operator setting, named before any work
        "task.operator_config.factor: not a setting of operator 'motion_blur'": [
            "--config=configs/dps.py:sr2",
            "--config.task.operator=motion_blur",
            w,
        ],
        # what can be checked before jax.distributed.initialize
        f"port {busy_port} is in use": [
            *dist,
            f"--coordinator=localhost:{busy_port}",
            "--process_id=0",
        ],
        "--process_id=2 must be in [0, 2)": [*dist, "--coordinator=localhost:1", "--process_id=2"],
        "must be HOST:PORT": [*dist, "--coordinator=localhost", "--process_id=0"],
        "unexpected arguments": ["--config=configs/dps.py:box", w, "extra"],
        "is a file, not a folder": [
            "--config=configs/dps.py:box",
            f"--workdir={tmp_path / 'a_file' / 'run'}",
        ],
    }
    (tmp_path / "a_file").write_text("not a folder")
    for (expected, _), (code, err) in zip(
        cases.items(), _absl_command("reproduce", [*cases.values()])
    ):
        _one_line("reproduce", code, err, expected)
    assert not (tmp_path / "w").exists()


def test_sweep_bad_input(tmp_path):
    w = f"--workdir={tmp_path / 'w'}"
    cases = {
        "one hyperparameter per --sweep": [
            "--config=configs/dps.py:box",
            "--sweep=eta:0.5,1,eta_b:0.5",
            w,
        ],
        "--sweep must be NAME:V1,V2": ["--config=configs/dps.py:box", "--sweep=scale", w],
        "configs/ddrm.py: 'sr8'": ["--config=configs/ddrm.py:sr8", "--sweep=eta:0.5", w],
    }
    for (expected, _), (code, err) in zip(cases.items(), _absl_command("sweep", [*cases.values()])):
        _one_line("sweep", code, err, expected)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "prog, expected, argv",
    [
        ("table", "/nonexistent: no summary.json", ["/nonexistent"]),
        ("table", "--grid_images=-1: -1 is not a non-negative", ["--grid_images=-1", "/x"]),
        ("demo", "metods", ["--config.metods=dps", "--workdir=WORK"]),
        ("train", "'nope' (in 'nope') fits no key", ["--config=configs/train_demo.py:nope",
                                                     "--workdir=WORK"]),
        ("benchmark", "invalid literal for int()", ["--batch=x", "--out=WORK/b.json"]),
        ("benchmark", "--batch=1,0: batch sizes must be >= 1",
         ["--arch=tiny", "--samplers=ddpm", "--batch=1,0", "--steps=1", "--out=WORK/b.json"]),
    ],
)  # fmt: skip
def test_table_demo_train_benchmark_bad_input(tmp_path, prog, expected, argv):
    argv = [a.replace("WORK", str(tmp_path / "w")) for a in argv]
    ((code, err),) = _absl_command(prog, [argv])
    _one_line(prog, code, err, expected)
    assert not (tmp_path / "w").exists()


def test_train_checks_its_counts_and_export_folder_before_any_write(tmp_path):
    """A batch size or log interval of 0 was a ZeroDivisionError traceback after config.json
    was written; an --export_dir that export may not replace was found after training."""
    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "results.jsonl").write_text("{}\n")
    w = [
        "--config=configs/train_demo.py:tiny",
        f"--workdir={tmp_path / 'w'}",
        "--config.train.num_steps=3",
    ]
    cases = {
        "data.batch_size=0 must be an integer >= 1; train.log_every=0 must be": [
            *w, "--config.data.batch_size=0", "--config.train.log_every=0"
        ],
        f"{theirs} is a non-empty folder without jaxdiff.json": [*w, f"--export_dir={theirs}"],
    }  # fmt: skip
    for (expected, _), (code, err) in zip(cases.items(), _absl_command("train", [*cases.values()])):
        _one_line("train", code, err, expected)
    assert not (tmp_path / "w").exists()
    assert [p.name for p in theirs.iterdir()] == ["results.jsonl"]


def test_a_bad_library_fusions_setting_is_one_line_before_any_write(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_XLA_LIBRARY_FUSIONS", "maybe")
    work = tmp_path / "w"
    argv = ["--config=configs/dps.py:box", f"--workdir={work}"]
    ((code, err),) = _absl_command("reproduce", [argv])
    _one_line("reproduce", code, err, "JAXDIFF_XLA_LIBRARY_FUSIONS='maybe'")
    assert not work.exists()


def test_demo_checks_every_run_before_it_writes(tmp_path):
    """A bad name or setting of any (method, task) run, not only the first, is one line before
    the workdir is claimed (it was found after the earlier runs had written their folders, in a
    workdir then holding the bad config)."""
    w = f"--workdir={tmp_path / 'w'}"
    small = [
        "--config.tasks=box",
        "--config.baselines=",
        "--config.ddpm_samples=0",
        "--config.num_images=1",
        "--config.task_respacing.box=2",
        "--noprogress",
        w,
    ]
    cases = {
        "demo.methods: unknown method 'dsp'": ["--config.methods=sdedit,dsp", *small],
        "demo.method_tasks.sdedit: unknown task(s) ['bxo']": [
            "--config.methods=sdedit", "--config.method_tasks.sdedit=bxo", *small
        ],
        "respacing 'abc'": [
            "--config.methods=sdedit,ddrm", "--config.method_respacing.ddrm=abc", *small
        ],
    }  # fmt: skip
    for (expected, _), (code, err) in zip(cases.items(), _absl_command("demo", [*cases.values()])):
        _one_line("demo", code, err, expected)
    assert not (tmp_path / "w").exists()


def test_the_demo_command_line_ends_a_config_typo_in_one_line(tmp_path):
    """The real command: the demo's default config is loaded while the flags are parsed, not
    at import (where ml_collections would apply a typo'd override with a traceback)."""
    r = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--config.method_tasks.dsp=box",
         f"--workdir={tmp_path / 'w'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    _one_line("demo", r.returncode, r.stderr, "--config.method_tasks.dsp: unknown config key")
    assert not (tmp_path / "w").exists()


def test_convert_and_parity_bad_input(tmp_path, capsys):
    from convert_weights.cli import main as convert
    from jaxdiff.parity.__main__ import main as parity

    assert convert([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convert_weights: error: "), err
    assert not (tmp_path / "out").exists()
    assert parity([str(tmp_path / "missing.npz")]) == 2
    assert parity([str(__import__("pathlib").Path(__file__))]) == 2  # no fixture kind
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("python -m jaxdiff.parity: error: ") for e in err)
    assert "missing.npz: no such file" in err[0] and "unknown fixture kind" in err[1]
    fixture = f"{REPO}/tests/fixtures/dps_inpaint_box_b1.npz"
    assert parity([fixture, "--model", str(tmp_path / "nomodel")]) == 2  # not a failed replay
    assert parity([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert not out and len(err) == 2, (out, err)
    assert (
        err[0] == f"python -m jaxdiff.parity: error: --model {tmp_path / 'nomodel'}: no such folder"
    )
    assert err[1].endswith(f"{tmp_path}: a folder; give its fixture files ({tmp_path}/*.npz)")


def test_a_broken_checkpoint_is_the_last_line_and_no_log_noise(tmp_path, tiny_model):
    """The real command line (os._exit after the line): a checkpoint whose params are gone
    ends in one line, the last on stderr; no traceback, no INFO log of absl or orbax."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    shutil.rmtree(model / "params" / "ocdbt.process_0")
    (model / "params" / "manifest.ocdbt").unlink()
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(f"{REPO}/tests/fixtures/op_image0_astronaut.png", data)
    r = subprocess.run(
        [sys.executable, "-m", "scripts.reproduce", "--config=configs/dps.py:box",
         f"--config.model={model}", f"--config.data={data}", f"--workdir={tmp_path / 'w'}",
         "--noprogress"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert lines[-1].startswith("reproduce: error: ") and "cannot restore" in lines[-1]
    assert "Traceback" not in r.stderr and "Event loop" not in r.stderr
    assert not [ln for ln in lines if re.match(r"I\d{4} ", ln)], r.stderr  # absl INFO lines
    assert not (tmp_path / "w").exists()


def test_library_info_logs_are_dropped_and_the_commands_own_kept():
    import logging

    from jaxdiff.cli import _quiet_libraries

    def record(path, level=logging.INFO):
        return logging.LogRecord("absl", level, path, 1, "m", (), None)

    assert not _quiet_libraries(record("/x/site-packages/orbax/checkpoint/checkpoint_manager.py"))
    assert not _quiet_libraries(record("/x/site-packages/jax/_src/xla_bridge.py"))
    assert _quiet_libraries(record("/x/site-packages/orbax/a.py", logging.WARNING))
    assert _quiet_libraries(record("/repo/jaxdiff/training.py"))  # train's progress lines


def test_sample_latent_bad_input_and_non_finite_images(tmp_path):
    """sample_latent starts (its flags do not collide with jaxdiff.cli's --debug), ends bad
    flags and a missing pipeline in one line, and writes no PNG of NaN pixels (status 3)."""
    pytest.importorskip("jaxdiff.convert.pipeline")
    from jaxdiff.convert.core import convert

    sd = tmp_path / "sd"
    convert(f"{REPO}/tests/fixtures/latent/sd_tiny", sd, progress=False)
    out = tmp_path / "s.png"
    base = [f"--model={sd}", "--prompt=x", f"--out={out}", "--steps=2"]
    cases = {
        "no pipeline.json": [f"--model={tmp_path / 'nope'}", "--prompt=x", f"--out={out}"],
        "--guidance_scale must be a finite number": [*base, "--guidance_scale=nan"],
        "--eta must be a finite number >= 0": [*base, "--eta=-1"],
        "--out names a folder": [*base[:2], f"--out={tmp_path}"],
        "--num_images=0": [*base, "--num_images=0"],
    }
    # 1e39 is finite here but overflows float32: the images come out NaN
    results = _absl_command("sample_latent", [*cases.values(), [*base, "--guidance_scale=1e39"]])
    for expected, (code, err) in zip(cases, results):
        _one_line("sample_latent", code, err, expected)
    code, err = results[-1]
    assert code == 3 and "not finite" in err.strip().splitlines()[-1], err
    assert not out.exists()
