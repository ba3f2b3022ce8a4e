"""Packaging: `--config=` names resolve to the packaged config files from any folder,
setup.py installs nothing named `configs` or `scripts` at the top of site-packages, and every
console command points at a function that exists."""

from __future__ import annotations

import ast
import pathlib
import runpy
import shutil
import subprocess
import sys
import types
import zipfile

import pytest
import setuptools
from absl import flags

from jaxdiff import cli, config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working folder with no configs/ in it (as after `cd /`)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_an_existing_config_path_is_left_as_given(elsewhere):
    (elsewhere / "configs").mkdir()
    (elsewhere / "configs" / "dps.py").write_text("def get_config(arg=None): ...\n")
    mine = str(REPO / "configs" / "sdedit.py")
    argv = ["prog", "--config=configs/dps.py:box", "--config", f"{mine}:sr4", "--workdir=w"]
    assert cli.resolve_config_argv(argv) == argv


@pytest.mark.parametrize("spelling", ["dps", "dps.py", "configs/dps.py"])
def test_a_packaged_config_name_resolves(elsewhere, spelling):
    dps = str(config_lib.config_path("dps"))
    argv = ["prog", f"--config={spelling}:box", "--config.num_images=1", "--workdir=configs"]
    assert cli.resolve_config_argv(argv) == [
        "prog",
        f"--config={dps}:box",
        "--config.num_images=1",
        "--workdir=configs",
    ]
    assert cli.resolve_config_argv(["prog", "--config", spelling]) == ["prog", "--config", dps]
    # after "--" everything is positional, left alone
    assert cli.resolve_config_argv(["prog", "--", f"--config={spelling}"])[-1] == (
        f"--config={spelling}"
    )


@pytest.mark.parametrize("value", ["nope:box", "elsewhere/dps.py:box", "configs/nope.py"])
def test_an_unknown_config_name_is_an_error_listing_the_known(elsewhere, value, capsys):
    with pytest.raises(ValueError, match="unknown config .*known: baselines, daps, .*dps"):
        cli.resolve_config_argv(["prog", f"--config={value}"])
    with pytest.raises(SystemExit) as e:
        cli.run(lambda argv: None, ["prog", f"--config={value}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"prog: error: --config={value}: no file")


def test_config_path_finds_the_files_the_commands_need():
    names = config_lib.config_names()
    assert {"demo", "train_demo", "baselines", "dps"} <= set(names)
    assert "__init__" not in names
    for name in ("demo", "train_demo"):
        path = config_lib.config_path(name)
        assert path.is_file() and path == config_lib.config_path(f"configs/{name}.py")


def _setup_kwargs(monkeypatch) -> dict:
    """The arguments setup.py gives setuptools.setup (nothing is built)."""
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return seen


def test_setup_installs_no_top_level_configs_or_scripts(monkeypatch):
    kw = _setup_kwargs(monkeypatch)
    top = {p.split(".")[0] for p in kw["packages"]}
    assert top == {"jaxdiff", "convert_weights"}, top
    assert {"jaxdiff.configs", "jaxdiff.scripts", "jaxdiff.baselines"} <= set(kw["packages"])
    assert kw["package_dir"] == {"jaxdiff.configs": "configs", "jaxdiff.scripts": "scripts"}
    assert not [p for p in kw["packages"] if p.startswith(("jaxdiff.tests", "tests"))]


def test_every_console_command_points_at_a_function(monkeypatch):
    """jaxdiff.scripts.X lives in scripts/X.py (package_dir); checked in the source (AST)."""
    kw = _setup_kwargs(monkeypatch)
    commands = dict(
        (s.strip() for s in line.split("=")) for line in kw["entry_points"]["console_scripts"]
    )
    want = {"convert", "reproduce", "sweep", "table", "demo", "train", "benchmark", "parity"}
    assert set(commands) == {f"jaxdiff-{c}" for c in want}
    for command, target in commands.items():
        module, func = target.split(":")
        parts = module.split(".")
        for package, folder in kw["package_dir"].items():
            if module.startswith(package + "."):
                parts = [folder, *module[len(package) + 1 :].split(".")]
        path = REPO.joinpath(*parts[:-1], parts[-1] + ".py")
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert func in defined, f"{command}: no {func}() in {path.relative_to(REPO)}"


def test_the_wheel_holds_no_top_level_configs_or_scripts(tmp_path):
    """`pip wheel` of a copy of the checkout (a build leaves build/ behind; ~15 s): its top-level
    names, the config files and the demo prior inside jaxdiff/."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*", "runs", "tests")
    shutil.copytree(REPO, src, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("jaxdiff-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("jaxdiff-")} == {
        "jaxdiff",
        "convert_weights",
    }
    assert "jaxdiff/configs/dps.py" in names and "jaxdiff/scripts/reproduce.py" in names
    assert "jaxdiff/assets/demo_prior/jaxdiff.json" in names


def test_an_installed_commands_help_shows_the_scripts_flags(monkeypatch):
    """Installed, __main__ is the console wrapper; --help must still list the script's flags."""
    module = types.ModuleType("jaxdiff_test_fake_script", "What the fake script does.")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    wrapper = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", wrapper)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/jaxdiff-fake"])
    flags.DEFINE_string("fake_script_flag", "x", "a flag", module_name=module.__name__)
    cli._help_for(module.__name__)
    assert "fake_script_flag" in flags.FLAGS.module_help("/venv/bin/jaxdiff-fake")
    assert wrapper.__doc__ == "What the fake script does."
