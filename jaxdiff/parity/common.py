"""The one report format shared by every fixture replay.

Each replay module exposes `replay(npz_path, model_dir=None) -> dict` returning
`{"file", "kind", "pass", "arrays": {name: compare(...)}}`; the CLI prints it as one JSON line.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np


def compare(got, want, atol: float, per_step: bool = False) -> dict:
    """Max abs / relative error of `got` vs `want` and pass/fail at `atol` (abs).

    With `per_step`, also the max abs error of each slice along the leading (time) axis, which is
    how error growth over a trajectory is reported.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return {"pass": False, "error": f"shape {got.shape} != reference {want.shape}"}
    err = np.abs(got - want)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    max_abs = float(np.max(err)) if err.size else 0.0
    out = {
        "max_abs_err": max_abs,
        "max_rel_err": max_abs / scale if scale > 0 else max_abs,
        "atol": atol,
        "pass": bool(np.isfinite(max_abs) and max_abs <= atol),
    }
    if per_step:
        out["per_step_max_abs_err"] = [float(e) for e in err.reshape(err.shape[0], -1).max(axis=1)]
    return out


def report(file: str | pathlib.Path, kind: str, arrays: dict[str, dict], **extra) -> dict:
    """Assemble a replay report; it passes only if every compared array passes."""
    return {
        "file": str(file),
        "kind": kind,
        "pass": all(a.get("pass", False) for a in arrays.values()),
        "arrays": arrays,
        **extra,
    }


def sidecar(npz_path: str | pathlib.Path, name: str | None = None) -> dict:
    """The JSON sidecar of a fixture: `name` beside it, else the .npz with a .json suffix."""
    npz_path = pathlib.Path(npz_path)
    path = npz_path.with_name(name) if name else npz_path.with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(f"{npz_path}: its JSON sidecar {path} is missing")
    return json.loads(path.read_text())


def nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    """Torch fixtures store images NCHW (possibly with a leading step axis); jaxdiff is NHWC."""
    return np.moveaxis(np.asarray(a), -3, -1)


def model_anchor(npz_path: str | pathlib.Path, name: str) -> pathlib.Path:
    """The path `load_model` should look beside for the fixture's model `name` (NAME.pt or a
    diffusers folder NAME/): the fixture itself, or its parent folder's copy (the shared layout
    keeps fixtures/<method>/*.npz with fixtures/adm_tiny.pt one level up)."""
    npz_path = pathlib.Path(npz_path)
    for folder in (npz_path.parent, npz_path.parent.parent):
        if (folder / f"{name}.pt").is_file() or (folder / name / "config.json").is_file():
            return folder / npz_path.name
    return npz_path
