"""Replay of the latent-diffusion fixture (`latent*.npz` + its JSON sidecar).

The run is a list of `Stage`s. Each names the diffusers / transformers classes it needs (found
beside the fixture from the sidecar's `files`, converted with the converter's Python API, or
taken from `--model DIR/<component>/`), computes its arrays from the fixture's inputs (NHWC
inside; returned in the fixture's layout) and gives each array its `Rule`. A new part of the
fixture is one more `Stage` appended to `STAGES`.

Rules (the fixture README's): every network output within 1e-5 * max(1, max|ref|) (the float64
replay of the same weights differs from torch float32 by at most 4.7e-6), indices exactly.
"""

from __future__ import annotations

import importlib
import pathlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.parity.common import (
    NotAFixture,
    compare,
    nchw_to_nhwc,
    report,
    run_dtype,
    sidecar,
)


@dataclass(frozen=True)
class Rule:
    """Tolerance rtol * max(floor, max|ref|) on the max abs error; rtol None: exactly equal."""

    rtol: float | None
    floor: float = 1.0

    def atol(self, ref) -> float:
        return 0.0 if self.rtol is None else self.rtol * max(self.floor, float(np.abs(ref).max()))

    def describe(self) -> str:
        return "exact" if self.rtol is None else f"{self.rtol:g} * max({self.floor:g}, max|ref|)"

    def check(self, got, want) -> dict:
        got, want = np.asarray(got), np.asarray(want)
        if self.rtol is None:
            if got.shape != want.shape:
                out = {"pass": False, "error": f"shape {got.shape} != reference {want.shape}"}
            else:
                wrong = int(np.sum(got != want))
                out = {"mismatches": wrong, "pass": wrong == 0}
        else:
            out = compare(got, want, atol=self.atol(want))
        return {**out, "rule": self.describe()}


NETWORK = Rule(1e-5)  # every network output (fixture README)
EXACT = Rule(None)


class Models:
    """The fixture's converted models by class name, converted once per source folder."""

    def __init__(self, npz_path: pathlib.Path, meta: dict, model_dir, dtype):
        self.sources = component_folders(npz_path, meta)
        self.meta = meta  # the fixture's sidecar (prompts, sampler settings, ...)
        self.model_dir, self.dtype, self._loaded = model_dir, dtype, {}

    def folder(self, cls: str) -> pathlib.Path:
        if cls not in self.sources:
            have = ", ".join(sorted(self.sources)) or "none"
            raise FileNotFoundError(f"no {cls} beside the fixture (found: {have})")
        return self.sources[cls]

    def get(self, cls: str):
        """(model, params, meta) of the fixture's `cls` (params in the replay dtype)."""
        from jaxdiff.models import load_pretrained

        if cls not in self._loaded:
            src = self.folder(cls)
            converted = None
            if self.model_dir is not None and (pathlib.Path(self.model_dir) / src.name).is_dir():
                converted = pathlib.Path(self.model_dir) / src.name
            model, params, meta = load_pretrained(converted or _convert(src), dtype=self.dtype)
            params = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), params)
            self._loaded[cls] = (model, params, meta)
        return self._loaded[cls]


_CONVERTED: dict[str, str] = {}


def _convert(src: pathlib.Path) -> str:
    if str(src) not in _CONVERTED:
        from jaxdiff.convert.core import convert

        out = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-parity-")) / src.name
        convert(src, out, progress=False)
        _CONVERTED[str(src)] = str(out)
    return _CONVERTED[str(src)]


def component_folders(npz_path: pathlib.Path, meta: dict) -> dict[str, pathlib.Path]:
    """{class name: folder} of every model folder the sidecar lists (its `files`), pipeline
    components included; without `files`, of the folders beside the fixture."""
    from jaxdiff.convert.pipeline import class_name

    base = npz_path.parent
    if isinstance(meta.get("files"), dict):
        folders = {(base / f).parent for f in meta["files"]}
    else:
        folders = {p for p in base.iterdir() if p.is_dir()}
        folders |= {p for f in list(folders) for p in f.iterdir() if p.is_dir()}
    found = {}
    for folder in sorted(folders):
        if folder.is_dir() and folder != base:
            name = class_name(folder)
            if name is not None:
                found.setdefault(name, folder)
    return found


@dataclass(frozen=True)
class Stage:
    """One part of the fixture: `run(arrays, models, dtype) -> {name: array}` (the fixture's
    layout) for the arrays in `rules`, using the classes in `needs`."""

    name: str
    needs: tuple[str, ...]
    rules: dict[str, Rule]
    run: Callable[[dict, Models, object], dict] = field(compare=False)

    def present(self, arrays: dict) -> bool:
        return any(k in arrays for k in self.rules)


def _nhwc(arrays, name, dtype):
    return jnp.asarray(nchw_to_nhwc(arrays[name]), dtype)


def _nchw(x):
    return np.moveaxis(np.asarray(x), -1, -3)


def run_vae(arrays: dict, models: Models, dtype) -> dict:
    model, params, _ = models.get("AutoencoderKL")
    v = {"params": params}
    mean, logvar = model.apply(v, _nhwc(arrays, "vae_x", dtype), method="encode")
    z = model.apply(v, _nhwc(arrays, "vae_x", dtype), method="encode_latents")
    decoded = model.apply(v, _nhwc(arrays, "vae_z", dtype), method="decode_latents")
    out = {"vae_mean": mean, "vae_logvar": logvar, "vae_z": z, "vae_decoded": decoded}
    return {k: _nchw(a) for k, a in out.items()}


def run_vq(arrays: dict, models: Models, dtype) -> dict:
    model, params, _ = models.get("VQModel")
    v = {"params": params}
    h = model.apply(v, _nhwc(arrays, "vae_x", dtype), method="encode")
    ref_h = _nhwc(arrays, "vq_h", dtype)  # quantize and decode the reference latents
    quant, indices = model.apply(v, ref_h, method="vector_quantize")
    decoded = model.apply(v, ref_h, method="decode")
    indices = np.asarray(indices).reshape(np.shape(arrays["vq_indices"]))
    out = {"vq_h": _nchw(h), "vq_quant": _nchw(quant), "vq_decoded": _nchw(decoded)}
    return {**out, "vq_indices": indices}


def run_unet(arrays: dict, models: Models, dtype) -> dict:
    model, params, _ = models.get("UNet2DConditionModel")
    z = _nhwc(arrays, "unet_zt", dtype)
    context = jnp.asarray(arrays["unet_context"], dtype)
    out = model.apply({"params": params}, z, arrays["unet_t"], context)
    return {"unet_out": _nchw(out)}


STAGES: list[Stage] = [
    Stage(
        "vae",
        ("AutoencoderKL",),
        {"vae_mean": NETWORK, "vae_logvar": NETWORK, "vae_z": NETWORK, "vae_decoded": NETWORK},
        run_vae,
    ),
    Stage(
        "vq",
        ("VQModel",),
        {"vq_h": NETWORK, "vq_quant": NETWORK, "vq_indices": EXACT, "vq_decoded": NETWORK},
        run_vq,
    ),
    Stage("unet", ("UNet2DConditionModel",), {"unet_out": NETWORK}, run_unet),
]


# modules whose STAGES extend the run, as (name, classes, {array: rtol, None = exact}, run)
# tuples: the text encoder and the DDIM run with guidance
STAGE_MODULES = ("jaxdiff.parity.latent_sampling",)


def all_stages() -> list[Stage]:
    stages = list(STAGES)
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module is there but something it imports is not
                raise
            continue
        for stage_name, needs, rules, run in module.STAGES:
            rules = {k: r if isinstance(r, Rule) else Rule(r) for k, r in rules.items()}
            stages.append(Stage(stage_name, tuple(needs), rules, run))
    return stages


def replay(npz_path, model_dir=None, dtype: str = "float32", stages=None) -> dict:
    """Every stage whose arrays the fixture holds; one report entry per array (its error and
    rule). `model_dir`: a folder of converted components by source folder name (DIR/unet,
    DIR/vae, DIR/vq_tiny, ...); the rest are converted from beside the fixture."""
    npz_path = pathlib.Path(npz_path)
    arrays = dict(np.load(npz_path))
    if not any(stage.present(arrays) for stage in all_stages()):
        raise NotAFixture(
            f"{npz_path.name} holds none of the latent pipeline stages' arrays: its own test "
            f"replays it"
        )
    meta = sidecar(npz_path)
    jdtype, ctx = run_dtype(dtype)
    results = {}
    with ctx, jax.default_matmul_precision("highest"):
        models = Models(npz_path, meta, model_dir, jdtype)
        for stage in all_stages() if stages is None else stages:
            if not stage.present(arrays):
                continue
            try:
                got = stage.run(arrays, models, jdtype)
            except Exception as e:  # the other stages still run; this one's arrays fail
                error = f"{stage.name}: {type(e).__name__}: {e}"
                results.update({k: {"pass": False, "error": error} for k in stage.rules})
                continue
            for name, rule in stage.rules.items():
                if name in arrays:
                    results[name] = rule.check(got[name], arrays[name])
    return report(npz_path, "latent", results, dtype=dtype)
