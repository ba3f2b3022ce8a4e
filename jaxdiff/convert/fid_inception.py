"""pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` -> jaxdiff's FID InceptionV3 parameters.

The file is recognised by its keys (`Conv2d_1a_3x3.conv.weight` ... `Mixed_7c.branch_pool.*`,
`fc` with the TF graph's 1008 classes). The key list and shapes are derived from the Flax model
(`jaxdiff.metrics.inception`), so a file that does not fit it is refused with every difference
named. `*.num_batches_tracked` (present or not: pytorch-fid's strict load accepts both) and `fc`
are not used for FID and are dropped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import KeyMismatchError, NotFIDInceptionError

ARCHITECTURE = "fid_inception"
FC_SHAPE = (1008, 2048)  # pytorch-fid's TF-ported logits (torchvision's ImageNet Inception: 1000)
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_MARKERS = ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight")


def looks_like_inception(state_dict: dict) -> bool:
    """True for any torchvision-style Inception3 state dict (FID or not): the converter then
    takes the Inception path and refuses it there, by name, if it is not the FID one."""
    return all(k in state_dict for k in _MARKERS)


@functools.cache
def expected_shapes() -> dict[str, tuple[int, ...]]:
    """{state-dict key: torch shape} of every tensor the FID network reads (no fc, no
    num_batches_tracked), from the Flax module tree."""
    from jaxdiff.metrics.inception import FIDInceptionV3

    shapes = jax.eval_shape(
        FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3))
    )["params"]
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = [p.key for p in path]
        *module, kind, leafname = names
        prefix = ".".join(module)
        if kind == "conv":
            h, w, i, o = leaf.shape
            out[f"{prefix}.conv.weight"] = (o, i, h, w)
        else:
            out[f"{prefix}.bn.{_BN[leafname]}"] = tuple(leaf.shape)
    return out


def check(state_dict: dict, what: str) -> None:
    """Raise NotFIDInceptionError unless `state_dict` is pytorch-fid's FID InceptionV3."""
    if not looks_like_inception(state_dict):
        some = ", ".join(list(state_dict)[:4])
        raise NotFIDInceptionError(
            f"{what}: not pytorch-fid's FID Inception (pt_inception-2015-12-05-6726825d.pth): "
            f"no {_MARKERS[0]} / {_MARKERS[1]} (keys start {some} ...)"
        )
    if any(k.startswith("AuxLogits.") for k in state_dict) or (
        "fc.weight" in state_dict and tuple(state_dict["fc.weight"].shape) != FC_SHAPE
    ):
        fc = tuple(state_dict["fc.weight"].shape) if "fc.weight" in state_dict else None
        raise NotFIDInceptionError(
            f"{what}: an Inception3, but not the FID one (fc {fc}, AuxLogits "
            f"{any(k.startswith('AuxLogits.') for k in state_dict)}): torchvision's ImageNet "
            f"weights give other features; FID needs pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth (fc {FC_SHAPE}, no AuxLogits)"
        )
    want = expected_shapes()
    optional = {k for k in state_dict if k.endswith(".num_batches_tracked")} | {
        "fc.weight",
        "fc.bias",
    }
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want and k not in optional]
    mism = [
        (k, tuple(state_dict[k].shape), want[k])
        for k in want
        if k in state_dict and tuple(state_dict[k].shape) != want[k]
    ]
    if missing or unexpected or mism:
        raise KeyMismatchError(f"{what} (FID Inception)", missing, unexpected, mism)


def state_dict_to_params(state_dict: dict, what: str = "checkpoint", strict: bool = True) -> dict:
    """The Flax params tree. `strict=False` converts whatever modules are present (tests
    hold a few blocks of the fixture network); the default checks the whole file first."""
    if strict:
        check(state_dict, what)
    params: dict = {}
    for key in expected_shapes():
        if key not in state_dict:
            if strict:
                raise KeyMismatchError(what, [key])
            continue
        *module, layer, leaf = key.split(".")
        node = params
        for m in module:
            node = node.setdefault(m, {})
        arr = np.asarray(state_dict[key], np.float32)
        if layer == "conv":
            node.setdefault("conv", {})["kernel"] = np.transpose(arr, (2, 3, 1, 0))  # OIHW->HWIO
        else:
            name = {v: k for k, v in _BN.items()}[leaf]
            node.setdefault("bn", {})[name] = arr
    return params


def meta(source: dict, converter_version: str) -> dict:
    """The jaxdiff.json sidecar of a converted FID Inception."""
    return {
        "architecture": ARCHITECTURE,
        "model_config": {
            "network": "pytorch-fid FID InceptionV3 (pt_inception-2015-12-05)",
            "dims": 2048,
            "input": "NHWC in [0, 1], any size; resized to 299 (torch bilinear, no antialias)",
        },
        "source": source,
        "converter_version": converter_version,
    }
