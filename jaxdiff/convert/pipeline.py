"""diffusers / transformers folders -> jaxdiff checkpoints, one converter per `_class_name`.

A component folder (``unet/``, ``vae/``, a VQModel folder, ...) names its class in
``config.json`` (``_class_name``, or transformers' ``architectures``), ``scheduler_config.json``
or ``tokenizer_config.json``; `COMPONENTS` maps that class to its converter, registered where
the key map lives (`jaxdiff/convert/latent.py`; modules listed in `CONVERTER_MODULES` are
imported on first use). A converter either writes a checkpoint (orbax params + jaxdiff.json:
kind "model") or copies the folder's small files as they are (kind "files": schedulers,
tokenizers).

A pipeline folder (``model_index.json``) becomes one folder with a sub-folder per component,
DIR/<component>/, and ``DIR/pipeline.json`` naming each (its class, its architecture); every
component listed must be there and have a converter, or nothing is written.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jaxdiff.checkpoint import META_FILE, check_replaceable
from jaxdiff.errors import CheckpointError
from jaxdiff.registry import Registry

PIPELINE_INDEX = "model_index.json"
PIPELINE_META = "pipeline.json"
# what --force may replace: a converted pipeline, a converted model (or an empty folder)
REPLACEABLE = (PIPELINE_META, META_FILE)
# modules whose import registers component converters (at their definition site): the diffusers
# models and schedulers, and the CLIP text encoder + tokenizer (skipped where not installed)
CONVERTER_MODULES = ("jaxdiff.convert.latent", "jaxdiff.convert.clip")
# the files a class's folder is recognised by, and the key naming the class in each
CLASS_FILES = (
    ("config.json", "_class_name"),
    ("config.json", "architectures"),
    ("scheduler_config.json", "_class_name"),
    ("tokenizer_config.json", "tokenizer_class"),
)


@dataclass(frozen=True)
class ComponentConverter:
    """How one class is converted.

    kind: "model" (`convert` writes a checkpoint folder) or "files" (`convert` copies files).
    convert(folder, out, *, force, progress, allow_large_weights) -> dict: the sidecar written
    (for "files", a small dict naming the files copied).
    architecture: the jaxdiff.models name a "model" converter writes (None for "files").
    """

    kind: str
    convert: Callable[..., dict]
    architecture: str | None = None


COMPONENTS: Registry[ComponentConverter] = Registry("pipeline component class")


def register_component(*class_names: str, kind: str = "model", architecture: str | None = None):
    """Decorator: `convert` is the converter of every class in `class_names`."""

    def add(convert):
        for name in class_names:
            COMPONENTS.register(name)(ComponentConverter(kind, convert, architecture))
        return convert

    return add


def load_converters() -> Registry[ComponentConverter]:
    for module in CONVERTER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module is there but something it imports is not
                raise
    return COMPONENTS


def read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt {what} JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object")
    return obj


def class_name(folder: Path) -> str | None:
    """The class a component folder holds, from its config files (None if none names one)."""
    for file, key in CLASS_FILES:
        path = Path(folder) / file
        if path.is_file():
            value = read_json(path, file).get(key)
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, str):
                return value
    return None


def is_pipeline(folder: Path) -> bool:
    """A diffusers pipeline folder: model_index.json naming the pipeline class."""
    index = Path(folder) / PIPELINE_INDEX
    return index.is_file() and "_class_name" in read_json(index, PIPELINE_INDEX)


def component_converter(folder: Path) -> ComponentConverter | None:
    """The converter of a component folder's class; None for a folder this registry leaves to
    the older paths (a diffusers UNet2DModel, a folder naming no class)."""
    name = class_name(folder)
    if name is None or name == "UNet2DModel":
        return None
    load_converters()
    if name in COMPONENTS:
        return COMPONENTS.get(name)
    raise CheckpointError(
        f"{folder}: holds a {name}, which has no converter (known: {', '.join(COMPONENTS.names())})"
    )


def convert_component(folder, out, **options) -> dict:
    """One component folder -> OUT (a checkpoint, or the copied files); `options` are
    force, progress, allow_large_weights."""
    folder = Path(folder)
    converter = component_converter(folder)
    if converter is None:
        raise CheckpointError(f"{folder}: names no class this converter knows")
    if converter.kind != "model":
        raise CheckpointError(
            f"{folder}: a {class_name(folder)} folder holds no weights to convert; pass the "
            "pipeline folder (it is read with the model that uses it) or a model folder"
        )
    return converter.convert(folder, Path(out), **options)


def pipeline_components(folder: Path) -> dict[str, tuple[str, ComponentConverter]]:
    """{component: (class, converter)} for every component model_index.json lists; one error
    naming every missing folder and every class without a converter."""
    index = read_json(folder / PIPELINE_INDEX, PIPELINE_INDEX)
    load_converters()
    found, problems = {}, []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, cls = value
        if cls is None:  # e.g. safety_checker: [null, null]
            continue
        if not (folder / name).is_dir():
            problems.append(f"component {name!r} ({library} {cls}): no folder {folder / name}")
        elif cls not in COMPONENTS:
            problems.append(f"component {name!r}: no converter for {library} {cls}")
        else:
            found[name] = (cls, COMPONENTS.get(cls))
    if problems:
        known = ", ".join(COMPONENTS.names())
        raise CheckpointError(
            f"{folder}: cannot convert the pipeline: " + "; ".join(problems) + f" (known: {known})"
        )
    if not found:
        raise CheckpointError(f"{folder}/{PIPELINE_INDEX}: lists no components")
    return found


def convert_pipeline(folder, out, *, force: bool = False, **options) -> dict:
    """Every component of a pipeline folder -> OUT/<component>/, and OUT/pipeline.json.

    Written into a temporary sibling first and moved into place at the end, so a failure
    leaves OUT as it was."""
    from jaxdiff.convert.core import CONVERTER_VERSION

    folder, out = Path(folder), Path(out).absolute()
    check_replaceable(out, force, REPLACEABLE)  # before the (possibly long) conversion
    components = pipeline_components(folder)
    index = read_json(folder / PIPELINE_INDEX, PIPELINE_INDEX)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    meta = {
        "format_version": 1,
        "pipeline": index["_class_name"],
        "components": {},
        "source": {"folder": folder.name, "diffusers_version": index.get("_diffusers_version")},
        "converter_version": CONVERTER_VERSION,
    }
    try:
        tmp.mkdir(parents=True)
        for name, (cls, converter) in components.items():
            written = converter.convert(folder / name, tmp / name, force=False, **options)
            entry = {"class": cls, "kind": converter.kind, "path": name}
            if converter.kind == "model":
                entry["architecture"] = written["architecture"]
                entry["num_parameters"] = written["num_parameters"]
            meta["components"][name] = entry
        (tmp / PIPELINE_META).write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        check_replaceable(out, True, REPLACEABLE)  # it may have appeared while we converted
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_files(names: tuple[str, ...]):
    """A "files" converter copying those of `names` the folder has (at least one)."""

    def convert(folder: Path, out: Path, *, force: bool = False, **_options) -> dict:
        present = [n for n in names if (folder / n).is_file()]
        if not present:
            raise CheckpointError(f"{folder}: none of {list(names)}")
        if out.exists() and not force:
            raise FileExistsError(f"{out} already exists; pass --force to replace it")
        out.mkdir(parents=True, exist_ok=True)
        for name in present:
            shutil.copyfile(folder / name, out / name)
        return {"files": present}

    return convert
