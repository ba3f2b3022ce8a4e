"""`python -m jaxdiff.parity FILE.npz... [--model CONVERTED_DIR] [--float64]`

Replays each reference fixture through jaxdiff and prints one JSON line per file (arrays compared,
max abs / relative error, per step for trajectories, pass/fail). Dispatch on the file name:
`<method>_*.npz` -> parity.<method> (ddpm, dps, ddrm, ddnm, pigdm, reddiff, diffpir, daps, dmps,
mpgd, repaint, mcg, mcg_diff, fps_smc, psld (and latent_dps_*), latent_daps, mmps, tmpd, tds, dsg,
pnpdm),
`fid*.npz` -> parity.fid, `latent*.npz` -> parity.latent, `operators*.npz` -> parity.operators,
`*_io.npz` -> parity.models.
Every setting is read from the fixture and its JSON sidecar. Without `--model`, the model named
in the sidecar is converted from beside the fixture when it is there. A .npz that is not a
trajectory fixture (no replay for its name, or none of its kind's arrays: operator probes beside
the trajectories) prints a line with "skipped" and the reason, so a whole folder replays with one
glob. The closing note (stderr) gives, per kind, the compared array closest to its tolerance and
its rule.
Exit status 1 if any file fails (or cannot be replayed), 2 on bad usage (a missing file or
--model folder, a folder given as a file: one line on stderr).
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
from jaxdiff.parity import own_level
from jaxdiff.parity.common import NotAFixture

ROUTES = (
    ("ddpm_*.npz", "ddpm"),
    ("dps_*.npz", "dps"),
    ("mcg_diff_*.npz", "mcg_diff"),  # before mcg_*, which would match it
    ("mcg_*.npz", "mcg"),
    ("fps_smc_*.npz", "fps_smc"),
    ("ddrm_*.npz", "ddrm"),
    ("ddnm_*.npz", "ddnm"),
    ("pigdm_*.npz", "pigdm"),
    ("reddiff_*.npz", "reddiff"),
    ("diffpir_*.npz", "diffpir"),
    ("daps_*.npz", "daps"),
    ("dmps_*.npz", "dmps"),
    ("mpgd_*.npz", "mpgd"),
    ("psld_*.npz", "psld"),
    ("latent_dps_*.npz", "psld"),
    ("repaint_*.npz", "repaint"),
    ("resample_*.npz", "resample"),
    ("latent_daps_*.npz", "latent_daps"),
    ("mmps_*.npz", "mmps"),
    ("tmpd_*.npz", "tmpd"),
    ("tds_*.npz", "tds"),
    ("dsg_*.npz", "dsg"),
    ("pnpdm_*.npz", "pnpdm"),
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
    if path.suffix == ".npz" and path.is_file():
        raise NotAFixture(f"no replay for this file name (fixture names: {known})")
    raise ValueError(f"{path}: unknown fixture kind (file names: {known})")


def run_one(path: pathlib.Path, model_dir: str | None, float64: bool) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    module = importlib.import_module(f"jaxdiff.parity.{route(path)}")
    if float64:
        if "dtype" not in inspect.signature(module.replay).parameters:
            raise ValueError(f"{path}: --float64 is not supported by jaxdiff.parity.{route(path)}")
        return module.replay(path, model_dir, dtype="float64")
    return own_level.replay(module, path, model_dir)


def worst_arrays(results: list[dict]) -> dict:
    """Per kind: the compared array closest to its tolerance (every gating comparison with an
    absolute tolerance: states, teacher-forced steps, samples; not the exact or relative ones)."""
    worst = {}
    for r in results:
        for name, a in r.get("arrays", {}).items():
            if "tol" not in a or "max_abs_err" not in a:
                continue
            err = a.get("max_abs_err_gated", a["max_abs_err"])  # steps reported, not gating
            ratio = err / a["tol"] if a["tol"] > 0 else float(err > 0)
            kind = r.get("kind", "?")
            if kind not in worst or ratio > worst[kind]["err/tol"]:
                rule = {k: a[k] for k in ("atol", "rtol", "f64_replay_x3") if k in a}
                worst[kind] = {
                    "file": r["file"], "array": name, "max_abs_err": err,
                    "max_rel_err": a.get("max_rel_err"), "tol": a["tol"], "err/tol": ratio, **rule,
                }  # fmt: skip
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdiff.parity", description=__doc__)
    parser.add_argument("files", nargs="+", help="fixture .npz files")
    parser.add_argument("--model", help="converted checkpoint folder (python -m convert_weights)")
    parser.add_argument("--float64", action="store_true", help="replay in float64 (x64 mode)")
    parser.add_argument("--traceback", action="store_true", help="print tracebacks of errors")
    args = parser.parse_args(argv)
    if args.model and not pathlib.Path(args.model).exists():  # not one failure per file
        print(f"{parser.prog}: error: --model {args.model}: no such folder", file=sys.stderr)
        return 2
    for name in args.files:  # bad input: one line, status 2, before any replay
        path = pathlib.Path(name)
        problem = None if path.is_file() else "no such file"
        if path.is_dir():
            problem = f"a folder; give its fixture files ({path}/*.npz)"
        if problem is None:
            try:
                route(path)
            except NotAFixture:  # a .npz of no replay: "skipped" below, not bad usage
                pass
            except ValueError as e:
                problem = str(e).removeprefix(f"{path}: ")
        if problem:
            print(f"{parser.prog}: error: {path}: {problem}", file=sys.stderr)
            return 2
    ok, results = True, []
    for name in args.files:
        path = pathlib.Path(name)
        try:
            result = run_one(path, args.model, args.float64)
        except NotAFixture as e:
            print(json.dumps({"file": str(path), "pass": None, "skipped": str(e)}), flush=True)
            continue
        except Exception as e:  # one line per file, whatever happened
            if args.traceback:
                traceback.print_exc()
            result = {"file": str(path), "pass": False, "error": f"{type(e).__name__}: {e}"}
        ok &= bool(result.get("pass", False))
        results.append(result)
        print(json.dumps(result, default=json_default), flush=True)
    for kind, w in worst_arrays(results).items():
        print(f"worst array, {kind}: " + json.dumps(w, default=json_default), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
