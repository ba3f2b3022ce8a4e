"""`python -m jaxdiff.parity FILE.npz... [--model CONVERTED_DIR] [--float64]`

Replays each reference fixture through jaxdiff and prints one JSON line per file (arrays compared,
max abs / relative error, per step for trajectories, pass/fail). Dispatch on the file name:
`<method>_*.npz` -> parity.<method> (ddpm, dps, ddim, ddrm, ddnm, pigdm, reddiff, diffpir, daps,
dmps), `fid*.npz` -> parity.fid, `latent*.npz` -> parity.latent, `operators*.npz` ->
parity.operators, `*_io.npz` -> parity.models.
Every setting is read from the fixture and its JSON sidecar. Without `--model`, the model named
in the sidecar is converted from beside the fixture when it is there.
Exit status 1 if any file fails (or cannot be replayed), 2 on bad usage (a missing file, a file
name of no known fixture kind: one line on stderr).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import inspect
import json
import pathlib
import sys
import traceback

from jaxdiff.data import json_default

ROUTES = (
    ("ddpm_*.npz", "ddpm"),
    ("dps_*.npz", "dps"),
    ("ddim_*.npz", "ddim"),
    ("ddrm_*.npz", "ddrm"),
    ("ddnm_*.npz", "ddnm"),
    ("pigdm_*.npz", "pigdm"),
    ("reddiff_*.npz", "reddiff"),
    ("diffpir_*.npz", "diffpir"),
    ("daps_*.npz", "daps"),
    ("dmps_*.npz", "dmps"),
    ("fid*.npz", "fid"),
    ("latent*.npz", "latent"),
    ("operators*.npz", "operators"),
    ("*_io.npz", "models"),
)


def route(path: pathlib.Path) -> str:
    for pattern, module in ROUTES:
        if fnmatch.fnmatch(path.name, pattern):
            return module
    known = ", ".join(p for p, _ in ROUTES)
    raise ValueError(f"{path}: unknown fixture kind (file names: {known})")


def run_one(path: pathlib.Path, model_dir: str | None, float64: bool) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    module = importlib.import_module(f"jaxdiff.parity.{route(path)}")
    kwargs = {}
    if float64:
        if "dtype" not in inspect.signature(module.replay).parameters:
            raise ValueError(f"{path}: --float64 is not supported by jaxdiff.parity.{route(path)}")
        kwargs["dtype"] = "float64"
    return module.replay(path, model_dir, **kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdiff.parity", description=__doc__)
    parser.add_argument("files", nargs="+", help="fixture .npz files")
    parser.add_argument("--model", help="converted checkpoint folder (python -m convert_weights)")
    parser.add_argument("--float64", action="store_true", help="replay in float64 (x64 mode)")
    parser.add_argument("--traceback", action="store_true", help="print tracebacks of errors")
    args = parser.parse_args(argv)
    for name in args.files:  # bad input: one line, status 2, before any replay
        path = pathlib.Path(name)
        problem = None if path.is_file() else "no such file"
        if problem is None:
            try:
                route(path)
            except ValueError as e:
                problem = str(e).removeprefix(f"{path}: ")
        if problem:
            print(f"{parser.prog}: error: {path}: {problem}", file=sys.stderr)
            return 2
    ok = True
    for name in args.files:
        path = pathlib.Path(name)
        try:
            result = run_one(path, args.model, args.float64)
        except Exception as e:  # one line per file, whatever happened
            if args.traceback:
                traceback.print_exc()
            result = {"file": str(path), "pass": False, "error": f"{type(e).__name__}: {e}"}
        ok &= bool(result.get("pass", False))
        print(json.dumps(result, default=json_default), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
