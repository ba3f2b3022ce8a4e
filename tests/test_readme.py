"""The README's Python quick start runs exactly as it stands there, in an empty folder, on the
bundled demo prior; docs/quickstart.ipynb is the same code cell by cell, stored without outputs,
and runs too (its code cells in order, without jupyter)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from jaxdiff import data

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "quickstart.ipynb"
METHODS = ("measurement", "dps", "ddrm")


def readme_quickstart() -> str:
    """The fenced python block under the README's "Quick start in Python" heading."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Quick start in Python\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Quick start in Python' section"
    blocks = re.findall(r"^```python\n(.*?)^```", m.group(1), re.S | re.M)
    assert len(blocks) == 1, f"expected one python block in the quick start, got {len(blocks)}"
    return blocks[0]


def notebook_code_cells() -> list[str]:
    nb = json.loads(NOTEBOOK.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent XLA cache for both runs: the second compiles nothing."""
    return tmp_path_factory.mktemp("xla_cache")


def run_python(code: str, cwd: pathlib.Path, cache: pathlib.Path) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",  # plt.show() returns at once
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def check_outputs(stdout: str, folder: pathlib.Path) -> None:
    """The PNGs are written and the printed metrics say the two methods improve on the
    measurement (deterministic: fixed keys, the shipped prior)."""
    scores = {}
    for name in METHODS:
        m = re.search(rf"^{name}: PSNR ([\d.]+), SSIM ([\d.]+), LPIPS ([\d.]+)$", stdout, re.M)
        assert m, f"no metrics line for {name} in:\n{stdout}"
        scores[name] = tuple(map(float, m.groups()))
    for name in ("dps", "ddrm"):
        assert scores[name][0] > scores["measurement"][0] + 0.5, scores  # PSNR
        assert scores[name][2] < scores["measurement"][2], scores  # LPIPS
    for name in ("truth", *METHODS):
        assert data.load_image(folder / f"{name}.png").shape == (32, 32, 3)
    assert data.load_image(folder / "quickstart.png").shape[1] > 4 * 32


def test_readme_quickstart_runs_as_written(tmp_path, compile_cache):
    check_outputs(run_python(readme_quickstart(), tmp_path, compile_cache), tmp_path)


def test_notebook_is_the_readme_code_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "\n\n".join(notebook_code_cells()) == readme_quickstart().rstrip("\n")


@pytest.mark.slow  # the same code as the README's block, which the default run executes
def test_notebook_cells_run_in_order(tmp_path, compile_cache):
    cells = notebook_code_cells()
    program = "\n".join(f"exec(compile({c!r}, 'cell {i}', 'exec'))" for i, c in enumerate(cells))
    check_outputs(run_python(program, tmp_path, compile_cache), tmp_path)
