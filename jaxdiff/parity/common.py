"""The replay engine: loading a fixture, the float32 / float64 context, comparison, report.

A method's replay module (`parity/<method>.py`) rebuilds the operator, schedule and draws from
the fixture and runs jaxdiff; everything else lives here, once:

    fx = Fixture.load(npz_path, "ddrm", dtype)     # arrays, sidecar, task, dtype
    with fx.context():                              # x64 for a float64 replay, highest matmuls
        fn, params, meta = fx.model("adm_tiny", model_dir)
        z = fx.nhwc("x_T_noise")                    # an input: listed as such in the report
        ...
    fx.check("x_t", got, atol, rtol, per_step=True) # |got - ref| <= atol + rtol * max|ref|
    return fx.report(**extra)

Every check records its rule (atol, rtol, the scale max|ref| it multiplies) and its error in the
JSON line; where the fixture's sidecar gives the official code's own float32-vs-float64
difference for an array, 3x that difference is the floor of its tolerance (`f64=`), also
recorded. The report lists the fixture's arrays that were inputs and those not compared, with
the reason (`fx.skip(name, why)`, else "not produced by this replay").
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Checked(NamedTuple):
    """One `Fixture.check` comparison, kept for parity.own_level to judge again."""

    got: np.ndarray
    want: np.ndarray
    atol: float
    rtol: float
    per_step: bool
    scale: Any
    f64: Any


# While parity.own_level records a replay: key -> Checked of every Fixture.check; None otherwise.
CHECKED: dict[str, Checked] | None = None


class NotAFixture(ValueError):
    """The file is not a trajectory fixture of the routed kind (the CLI skips it, saying why)."""


def run_dtype(dtype: str):
    """(jnp dtype, context) for a float32 or float64 replay (float64 enables x64 inside)."""
    if dtype == "float64":
        return jnp.float64, jax.enable_x64(True)
    if dtype == "float32":
        return jnp.float32, contextlib.nullcontext()
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    """Torch fixtures store images NCHW (possibly with a leading step axis); jaxdiff is NHWC."""
    return np.moveaxis(np.asarray(a), -3, -1)


def swap01(a) -> np.ndarray:
    """(B, K, ...) <-> (K, B, ...): jaxdiff's image-major trajectories vs the step-major files."""
    return np.swapaxes(np.asarray(a), 0, 1)


def sidecar(npz_path: str | pathlib.Path, name: str | None = None) -> dict:
    """The JSON sidecar of a fixture: `name` beside it, else the .npz with a .json suffix."""
    npz_path = pathlib.Path(npz_path)
    path = npz_path.with_name(name) if name else npz_path.with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(f"{npz_path}: its JSON sidecar {path} is missing")
    return json.loads(path.read_text())


def model_name(text, default: str | None = None) -> str | None:
    """The model a sidecar names ("adm_tiny.pt (...)" -> "adm_tiny")."""
    m = re.match(r"\s*([\w.-]+?)(\.pt)?\b", text or "")
    return m.group(1) if m else default


def model_anchor(npz_path: str | pathlib.Path, name: str) -> pathlib.Path:
    """Where `load_model` looks beside for the fixture's model `name` (NAME.pt or a diffusers
    folder NAME/): the fixture's folder, or its parent (fixtures/<method>/*.npz with
    fixtures/adm_tiny.pt one level up)."""
    npz_path = pathlib.Path(npz_path)
    for folder in (npz_path.parent, npz_path.parent.parent):
        if (folder / f"{name}.pt").is_file() or (folder / name / "config.json").is_file():
            return folder / npz_path.name
    return npz_path


def load_model(npz_path, model_dir, name: str | None, dtype):
    """(model_fn, params, meta): from `model_dir`, else by converting `name` found beside the
    fixture (an ADM `<name>.pt`, with `<name>.json` kwargs when present, or a diffusers folder)
    into a temporary folder with the converter's Python API."""
    from jaxdiff.models import load_pretrained

    if model_dir is None:
        model_dir = convert_beside(pathlib.Path(npz_path), name)
    model, params, meta = load_pretrained(model_dir, dtype=dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return (lambda p, x, t: model.apply({"params": p}, x, t)), params, meta


_CONVERTED: dict = {}


def convert_beside(npz_path: pathlib.Path, name: str | None) -> str:
    """The converted folder of model `name` beside the fixture (converted once per process)."""
    if not name:
        raise FileNotFoundError(f"{npz_path}: the sidecar names no model; pass --model DIR")
    folder = npz_path.parent
    pt, sub = folder / f"{name}.pt", folder / name
    if (sub / "config.json").is_file():
        src, config = sub, None
    elif pt.is_file():
        src = pt
        kwargs = folder / f"{name}.json"
        config = kwargs if kwargs.is_file() and "kwargs" in json.loads(kwargs.read_text()) else None
    else:
        raise FileNotFoundError(
            f"{npz_path}: model {name!r} not found beside it ({pt.name} or {name}/config.json); "
            "pass --model CONVERTED_DIR (python -m convert_weights SRC --out DIR)"
        )
    key = (str(src), str(config))
    if key not in _CONVERTED:
        from jaxdiff.convert.core import convert

        out = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-parity-")) / name
        convert(src, out, config=config, progress=False)
        _CONVERTED[key] = str(out)
    return _CONVERTED[key]


def f64_level(levels: dict | None, name: str):
    """The official code's own float32-vs-float64 difference for array `name` from a sidecar's
    f64_replay dict (`max_abs_diff_<name>_per_step`, `_per_iter`, ..., or `max_abs_diff_<name>`)."""
    if not levels:
        return None
    if isinstance(levels, str):
        levels = json.loads(levels)
    for key, value in levels.items():
        if key == f"max_abs_diff_{name}" or key.startswith(f"max_abs_diff_{name}_per_"):
            return value
    return None


def f64_max(levels) -> float | None:
    """The largest recorded float64-replay difference (nulls skipped); None without any."""
    if levels is None:
        return None
    a = np.asarray(levels, np.float64).reshape(-1)
    return float(np.nanmax(a)) if np.any(np.isfinite(a)) else None


def beyond_cap(levels: dict, refs: dict, cap: float = 1e-3, factor=1.0) -> list[str]:
    """The arrays whose reference's own float32-vs-float64 difference (`levels`: name -> the
    sidecar's level, a number or one per step), times `factor` (a number or name -> number,
    default 1), leaves the cap `cap * max(1, max|ref|)`: there no float32 port can be held to
    the cap over the whole chain (a chaotic chain; the replay checks it teacher-forced)."""
    out = []
    for name, ref in refs.items():
        lvl = f64_max(levels.get(name))
        f = factor.get(name, 1.0) if isinstance(factor, dict) else factor
        ref = np.asarray(ref, np.float64)
        scale = float(np.nanmax(np.abs(ref))) if ref.size else 0.0
        if lvl is not None and f * lvl > cap * max(1.0, scale):
            out.append(name)
    return out


# a float32 port as accurate as the reference sits up to twice the reference's own float64 gap
# from it: where that leaves the cap for a recorded state, the chain is checked teacher-forced
CHAOS_FACTOR = 2.0


def chaotic(levels: dict, refs: dict, cap: float = 1e-3) -> list[str]:
    """The recorded states (`refs`: name -> reference array) whose sidecar float64 level
    (`levels`: the sidecar's f64_replay), doubled, leaves the cap: the file is then checked
    teacher-forced (README "chaotic chains"); decided on the reference's levels only."""
    return beyond_cap({n: f64_level(levels, n) for n in refs}, refs, cap, CHAOS_FACTOR)


def teacher_forced(run, sched, x_T, x_ref, draws) -> dict:
    """Each step i (respaced index k = n-1-i) run alone from the reference's own input state
    (x_T, then x_ref[i-1]) with the draws from step i on, on the schedule's prefix [0..k] (the
    full chain's tables and index k). `run(schedule, start, draws)` -> a result with
    an image-major trajectory; draws: leaves (B, T, ...). Returns step records, (T, B, ...)."""
    from jaxdiff.diffusion.schedule import Schedule

    n, records = sched.num_steps, []
    for i in range(n):
        k = n - 1 - i
        sub = Schedule(
            sched.alphas_cumprod[: k + 1], sched.timestep_map[: k + 1], sched.num_train_timesteps,
            sched.variance_type, sched.convention, sched.train_alphas_cumprod,
        )  # fmt: skip
        # the full chain's entries (a one-entry prefix cannot form step 0's clipped variance)
        sub.tables = {name: t[: k + 1] for name, t in sched.tables.items()}
        sub.betas = sub.tables["betas"]
        start = x_T if i == 0 else x_ref[i - 1]
        tail = jax.tree.map(lambda a, i=i: np.asarray(a)[:, i:], draws)
        step = run(sub, start, tail).trajectory
        records.append(jax.tree.map(lambda a: np.asarray(a)[:, 0], step))
    return jax.tree.map(lambda *a: np.stack(a), *records)


def compare(got, want, atol: float = 0.0, rtol: float = 0.0, *, per_step=False, scale=None,
            f64=None) -> dict:  # fmt: skip
    """|got - want| <= atol + rtol * scale, scale = max|want| (or `scale`); with `per_step`, per
    slice k of the leading (time) axis with scale_k = max|want_k|. `f64` (a number, or one per
    step): the official code's float32-vs-float64 difference; 3x it is the tolerance's floor."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return {"pass": False, "error": f"shape {got.shape} != reference {want.shape}"}
    # the same non-finite value where the reference has one (an official H_pinv dividing by 0)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(got - want))
    finite = np.where(np.isfinite(want), np.abs(want), 0.0)
    steps = want.shape[0] if per_step and want.ndim else 1
    err_k = err.reshape(steps, -1).max(axis=1) if err.size else np.zeros(steps)
    if scale is None:
        scale = finite.reshape(steps, -1).max(axis=1) if want.size else np.zeros(steps)
    tol = atol + rtol * np.asarray(scale, np.float64)
    out = {"atol": atol, "rtol": rtol}
    if f64 is not None:
        # null / NaN where the official step computes nothing: no floor there
        floor = np.nan_to_num(3.0 * np.asarray(f64, np.float64), nan=0.0)
        if floor.ndim and floor.shape[0] != steps:  # per-step levels of another layout
            floor = floor.max()
        tol = np.maximum(tol, floor)
        out["f64_replay_x3"] = float(np.max(floor))
    tol = np.broadcast_to(tol, err_k.shape)
    max_abs = float(err_k.max()) if err_k.size else 0.0
    ref_max = float(finite.max()) if want.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            tol > 0, err_k / np.where(tol > 0, tol, 1.0), np.where(err_k > 0, np.inf, 0)
        )
    out.update(
        max_ratio_to_tol=float(ratio.max()) if ratio.size else 0.0,
        max_abs_err=max_abs,
        max_rel_err=max_abs / ref_max if ref_max > 0 else max_abs,
        tol=float(tol.max()),
        pass_=bool(np.all(np.isfinite(err_k)) and np.all(err_k <= tol)),
    )
    out["pass"] = out.pop("pass_")
    if per_step:
        out["per_step_max_abs_err"] = [float(e) for e in err_k]
        if np.ptp(tol) > 0:
            out["per_step_tol"] = [float(t) for t in tol]
    return out


def compare_rel(got, want, rtol: float, atol: float = 0.0) -> dict:
    """Elementwise |got - want| <= atol + rtol |want| (coefficient tables, losses, grids)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return {"pass": False, "error": f"shape {got.shape} != reference {want.shape}"}
    err = np.abs(got - want)
    rel = float(np.max(err / np.maximum(np.abs(want), 1e-30))) if err.size else 0.0
    ok = bool(np.all(err <= atol + rtol * np.abs(want)))
    return {"pass": ok, "elementwise": True, "atol": atol, "rtol": rtol, "max_rel_err": rel,
            "max_abs_err": float(err.max()) if err.size else 0.0}  # fmt: skip


def compare_exact(got, want) -> dict:
    got, want = np.asarray(got), np.asarray(want)
    ok = got.shape == want.shape and bool(np.all(got == want))
    out = {"pass": ok, "exact": True}
    if not ok:
        out.update(got=got.reshape(-1).tolist()[:10], want=want.reshape(-1).tolist()[:10])
        out["shapes"] = [list(got.shape), list(want.shape)]
    return out


def report(file: str | pathlib.Path, kind: str, arrays: dict[str, dict], **extra) -> dict:
    """Assemble a replay report; it passes only if every compared array passes."""
    return {
        "file": str(file),
        "kind": kind,
        "pass": bool(arrays) and all(a.get("pass", False) for a in arrays.values()),
        "arrays": arrays,
        **extra,
    }


class Fixture:
    """One fixture file being replayed: its arrays, sidecar, task and dtype, and the checks made.

    Arrays read with `fx[name]` / `fx.nhwc(name)` are inputs; arrays compared with `fx.check` /
    `fx.exact` / `fx.rel` are checked; the report lists every other array with why it was not."""

    def __init__(self, path, arrays: dict, config: dict, task_name: str | None, task, dtype):
        self.path = pathlib.Path(path)
        self.arrays = arrays
        self.config = config
        self.task_name = task_name
        self.task = task
        self.dtype = dtype
        self.jdtype, self._x64 = run_dtype(dtype)
        self.results: dict[str, dict] = {}
        self.inputs: set[str] = set()
        self.compared: set[str] = set()
        self.skipped: dict[str, str] = {}

    @classmethod
    def load(cls, npz_path, method: str | None = None, dtype: str = "float32",
             sidecar_name: str | None = None, trajectory: tuple = ()) -> Fixture:  # fmt: skip
        """Read `<method>_<task>[_b<B>].npz` and its sidecar (`<method>.json` beside it, else the
        same-name .json). `trajectory`: arrays one of which a fixture of this kind holds; a file
        without any is not one (NotAFixture)."""
        path = pathlib.Path(npz_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if trajectory and not set(trajectory) & set(arrays):
            raise NotAFixture(
                f"{path.name} holds none of a {method} trajectory's arrays "
                f"({', '.join(trajectory)}); its arrays: {', '.join(sorted(arrays)[:8])}"
            )
        config = sidecar(path, sidecar_name or (f"{method}.json" if method else None))
        task_name, task = None, None
        if method and "tasks" in config:
            stem = path.stem[len(method) + 1 :] if path.stem.startswith(f"{method}_") else path.stem
            for cand in (stem, re.sub(r"_b\d+$", "", stem)):
                if cand in config["tasks"]:
                    task_name, task = cand, config["tasks"][cand]
                    break
            else:
                raise KeyError(
                    f"{path}: task {stem!r} not in its sidecar; tasks: {sorted(config['tasks'])}"
                )
        return cls(path, arrays, config, task_name, task, dtype)

    def context(self):
        """The replay's numeric context: x64 for a float64 replay, highest matmul precision."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._x64)
        stack.enter_context(jax.default_matmul_precision("highest"))
        return stack

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __getitem__(self, name: str) -> np.ndarray:
        """An input array (a draw, a setting, an operator piece)."""
        self.inputs.add(name)
        return self.arrays[name]

    def get(self, name: str, default=None):
        return self[name] if name in self.arrays else default

    def nhwc(self, name: str) -> np.ndarray:
        return nchw_to_nhwc(self[name])

    def jnp(self, a) -> jnp.ndarray:
        return jnp.asarray(a, self.jdtype)

    def model(self, name: str | None, model_dir=None):
        """(model_fn, params, meta) of the fixture's network (`--model DIR` or converted)."""
        where = model_anchor(self.path, name) if name else self.path
        return load_model(where, model_dir, name, self.jdtype)

    def _ref(self, name, ref, nhwc):
        if ref is None and name not in self.arrays:
            return None
        self.compared.add(name)
        want = self.arrays[name] if ref is None else ref
        return nchw_to_nhwc(want) if nhwc else want

    def check(self, name, got, atol=0.0, rtol=0.0, *, ref=None, key=None, nhwc=False,
              per_step=False, scale=None, f64=None) -> dict:  # fmt: skip
        """Compare `got` with fixture array `name` (or `ref`, derived from it) under
        |got - ref| <= atol + rtol * max|ref| (per step with `per_step`); recorded as `key`.
        Nothing when the fixture does not hold `name` (a trimmed copy)."""
        want = self._ref(name, ref, nhwc)
        if want is None:  # the fixture does not hold it (a trimmed copy)
            return None
        out = compare(got, want, atol, rtol, per_step=per_step, scale=scale, f64=f64)
        self.results[key or name] = out
        if CHECKED is not None:  # parity.own_level re-judges floored checks from these
            got64 = np.asarray(got, np.float64)
            CHECKED[key or name] = Checked(got64, want, atol, rtol, per_step, scale, f64)
        return out

    def exact(self, name, got, ref=None, key=None) -> dict:
        want = self._ref(name, ref, False)
        if want is None:
            return None
        out = compare_exact(got, want)
        self.results[key or name] = out
        return out

    def rel(self, name, got, rtol, atol=0.0, ref=None, key=None, nhwc=False) -> dict:
        want = self._ref(name, ref, nhwc)
        if want is None:
            return None
        out = compare_rel(got, want, rtol, atol)
        self.results[key or name] = out
        return out

    def add(self, key: str, result: dict) -> None:
        """A check that is not one array's comparison (operator probes, statistics)."""
        self.results[key] = result

    def skip(self, name: str, why: str) -> None:
        """Array `name` is not compared, for the reason `why`."""
        if name in self.arrays:
            self.skipped[name] = why

    def report(self, kind: str, **extra) -> dict:
        not_compared = {
            n: self.skipped.get(n, "not produced by this replay")
            for n in sorted(self.arrays)
            if n not in self.compared and n not in self.inputs
        }
        extra = {"dtype": self.dtype, **({"task": self.task_name} if self.task_name else {}),
                 **extra}  # fmt: skip
        return report(
            self.path, kind, self.results, **extra,
            inputs=sorted(self.inputs - self.compared), not_compared=not_compared,
        )  # fmt: skip
