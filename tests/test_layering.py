"""The import layering, read from the source (no module is imported): the library never reaches
into its entry points, and the model/sampler core never into the experiment machinery above it.

Layers, bottom up: jaxdiff.{models,diffusion,samplers,operators,metrics} (the core), then the
rest of jaxdiff (conversion, experiments, runs, parity), then the entry points convert_weights/,
configs/ and scripts/, which may import anything below them.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "jaxdiff"
# configs/ and scripts/ also install as jaxdiff.configs / jaxdiff.scripts (setup.py): same layer
ENTRY_POINTS = ("convert_weights", "configs", "scripts", "jaxdiff.configs", "jaxdiff.scripts")
CORE = ("models", "diffusion", "samplers", "operators", "metrics")
ABOVE_CORE = (
    "experiment",
    "runner",
    "runs",
    "sharding",
    "sweep",
    "report",
    "training",
    "demo",
    "images",
    "cli",
    "convert",
    "parity",
    "latent",
)


def imported_modules(path: pathlib.Path):
    """`(line, dotted name)` of every import in the file, function-level ones included; relative
    imports resolved against the file's package, and `from pkg import name` also yields
    `pkg.name` (name may be a submodule)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join((*base, node.module) if node.module else base)
            else:
                module = node.module
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(files, forbidden) -> list[str]:
    """`file:line: imports module`, once per offending import statement."""
    out = {}
    for path in files:
        for line, module in imported_modules(path):
            key = (str(path.relative_to(ROOT)), line)
            if key not in out and any(_within(module, bad) for bad in forbidden):
                out[key] = f"{key[0]}:{line}: imports {module}"
    return [out[k] for k in sorted(out)]


def _library_files(*parts):
    return sorted((LIBRARY.joinpath(*parts)).rglob("*.py"))


def test_library_never_imports_entry_points():
    bad = "\n".join(violations(_library_files(), ENTRY_POINTS))
    assert not bad, f"jaxdiff/ must not import {', '.join(ENTRY_POINTS)}:\n{bad}"


def test_core_never_imports_the_layers_above():
    files = [f for pkg in CORE for f in _library_files(pkg)]
    assert files, "no core files found"
    bad = "\n".join(violations(files, [f"jaxdiff.{m}" for m in ABOVE_CORE]))
    assert not bad, f"jaxdiff.{{{','.join(CORE)}}} must not import jaxdiff.{ABOVE_CORE}:\n{bad}"


def test_the_scan_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The old cycle was a function-level `from convert_weights.cli import convert` in
    jaxdiff/parity/ddpm.py: such imports, and relative ones, must be caught."""
    pkg = tmp_path / "jaxdiff" / "models"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(
        "def f():\n    from convert_weights.cli import convert\n"
        "from ..parity import ddpm\nfrom jaxdiff import runner\nfrom jaxdiff import configs\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    files = [pkg / "x.py"]
    assert violations(files, ENTRY_POINTS) == [
        "jaxdiff/models/x.py:2: imports convert_weights.cli",
        "jaxdiff/models/x.py:5: imports jaxdiff.configs",
    ]
    assert violations(files, [f"jaxdiff.{m}" for m in ABOVE_CORE]) == [
        "jaxdiff/models/x.py:3: imports jaxdiff.parity",
        "jaxdiff/models/x.py:4: imports jaxdiff.runner",
    ]
