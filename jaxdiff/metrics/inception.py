"""pytorch-fid's FID InceptionV3 in Flax: pool3 features exactly as `pytorch_fid` computes them.

The network is torchvision's `Inception3` with pytorch-fid's `FIDInceptionA/C/E_1/E_2` blocks
(mseitzer/pytorch-fid, src/pytorch_fid/inception.py), the port of the TF graph behind
`pt_inception-2015-12-05-6726825d.pth`. Its quirks, all kept here:

* every conv is `BasicConv2d`: conv without bias, BatchNorm with TF's eps 1e-3, ReLU;
* the 3x3 average pools of the A/C/E_1 blocks exclude the zero padding from the mean
  (`count_include_pad=False`); Mixed_7c's pool is a 3x3 stride-1 MAX pool (padded with -inf);
* stride-2 convs and pools are VALID (floor), stride-1 convs pad symmetrically ("SAME");
* the input is resized to 299x299 by torch's bilinear `F.interpolate(align_corners=False)`
  WITHOUT antialiasing (a plain 2-tap filter even when downsampling), weights computed in the
  input dtype, then mapped [0, 1] -> [-1, 1];
* pool3 is the mean of the 8x8 Mixed_7c map (the 1008-class `fc` is never used).

Parameter names follow the state-dict keys (`Mixed_5b/branch1x1/conv/kernel` for
`Mixed_5b.branch1x1.conv.weight`), so the converter is a transpose per tensor.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-3
SIZE = 299
DIMS = 2048
# The outputs `features(..., output=NAME)` can stop at (pytorch-fid's block ends and the
# fixture's intermediate arrays).
OUTPUTS = ("block0_maxpool1", "block1_maxpool2", "mixed_5d", "mixed_6e", "mixed_7c", "pool3")


class BasicConv2d(nn.Module):
    """torchvision BasicConv2d: relu(bn(conv(x))), conv without bias, eval-mode BatchNorm."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        shape = (*self.kernel, cin, self.features)
        w = self.param("conv", lambda k: {"kernel": jnp.zeros(shape, jnp.float32)})["kernel"]
        bn = self.param(
            "bn",
            lambda k: {
                n: jnp.ones((self.features,), jnp.float32) for n in ("scale", "bias", "mean", "var")
            },
        )
        ph, pw = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            w.astype(self.dtype),
            (self.stride, self.stride),
            ((ph, ph), (pw, pw)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        c = {k: v.astype(self.dtype) for k, v in bn.items()}
        y = (y - c["mean"]) / jnp.sqrt(c["var"] + BN_EPS) * c["scale"] + c["bias"]
        return nn.relu(y)


def _avg3(x):
    """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):  # FIDInceptionA
    pool_features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b1 = C(64, (1, 1), name="branch1x1")(x)
        b5 = C(48, (1, 1), name="branch5x5_1")(x)
        b5 = C(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = C(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = C(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = C(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = C(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # torchvision InceptionB (Mixed_6a)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b3 = C(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = C(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = C(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = C(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class InceptionC(nn.Module):  # FIDInceptionC
    channels_7x7: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        c7 = self.channels_7x7
        b1 = C(192, (1, 1), name="branch1x1")(x)
        b7 = C(c7, (1, 1), name="branch7x7_1")(x)
        b7 = C(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = C(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = C(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = C(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = C(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = C(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = C(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = C(192, (1, 1), name="branch_pool")(_avg3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # torchvision InceptionD (Mixed_7a)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b3 = C(192, (1, 1), name="branch3x3_1")(x)
        b3 = C(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = C(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = C(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = C(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = C(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class InceptionE(nn.Module):  # FIDInceptionE_1 (avg pool) / FIDInceptionE_2 (max pool)
    max_pool: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b1 = C(320, (1, 1), name="branch1x1")(x)
        b3 = C(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                C(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                C(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = C(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = C(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                C(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                C(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.max_pool:  # F.max_pool2d(x, 3, stride=1, padding=1): pads with -inf
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            pooled = _avg3(x)
        bp = C(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """(B, 299, 299, 3) in [-1, 1] (pytorch-fid's normalised input) -> the map named `output`
    ((B, 2048) for "pool3"). Call `preprocess` first on [0, 1] images of any size."""

    output: str = "pool3"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown Inception output {self.output!r}; known: {OUTPUTS}")
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        x = C(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = C(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = C(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max3s2(x)
        if self.output == "block0_maxpool1":
            return x
        x = C(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = C(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max3s2(x)
        if self.output == "block1_maxpool2":
            return x
        for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool, dtype=self.dtype, name=name)(x)
        if self.output == "mixed_5d":
            return x
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
        for name, c7 in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):
            x = InceptionC(c7, dtype=self.dtype, name=name)(x)
        if self.output == "mixed_6e":
            return x
        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
        x = InceptionE(False, dtype=self.dtype, name="Mixed_7b")(x)
        x = InceptionE(True, dtype=self.dtype, name="Mixed_7c")(x)
        if self.output == "mixed_7c":
            return x
        return jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)) -> pool3


@functools.cache
def _bilinear_taps(n_in: int, n_out: int, dtype: str):
    """torch upsample_bilinear2d (align_corners=False) source indices and weights along one
    axis, evaluated in `dtype` as torch does for that input dtype."""
    dt = np.dtype(dtype)
    scale = dt.type(n_in) / dt.type(n_out)
    src = scale * (np.arange(n_out).astype(dt) + dt.type(0.5)) - dt.type(0.5)
    src = np.maximum(src, dt.type(0)).astype(dt)
    i0 = np.floor(src).astype(np.int32)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = (src - i0.astype(dt)).astype(dt)
    l0 = (dt.type(1) - l1).astype(dt)
    return i0, i1, l0, l1


def resize_bilinear(x, size: int = SIZE):
    """F.interpolate(x, (size, size), mode="bilinear", align_corners=False), no antialias, on
    one NHWC batch; an identity when the input already has that size."""
    dtype = np.dtype(x.dtype).name
    h0, h1, hl0, hl1 = _bilinear_taps(x.shape[1], size, dtype)
    w0, w1, wl0, wl1 = _bilinear_taps(x.shape[2], size, dtype)
    rows0, rows1 = jnp.take(x, h0, axis=1), jnp.take(x, h1, axis=1)

    def cols(r):
        return wl0[:, None] * jnp.take(r, w0, axis=2) + wl1[:, None] * jnp.take(r, w1, axis=2)

    return hl0[:, None, None] * cols(rows0) + hl1[:, None, None] * cols(rows1)


def preprocess(x):
    """pytorch-fid's input path: [0, 1] NHWC (u8 / 255) of any size -> (B, 299, 299, 3) in
    [-1, 1] (resize, then 2x - 1, as `InceptionV3(resize_input=True, normalize_input=True)`)."""
    return 2 * resize_bilinear(x) - 1


def from_uint8(u8, dtype=jnp.float32):
    """torchvision ToTensor's scaling: a true division by 255 in `dtype`."""
    return jnp.asarray(u8).astype(dtype) / jnp.asarray(255, dtype)


@functools.cache
def _compiled(output: str, dtype: str):
    model = FIDInceptionV3(output=output, dtype=jnp.dtype(dtype))

    @jax.jit
    def forward(params, x01):
        with jax.default_matmul_precision("highest"):
            return model.apply({"params": params}, preprocess(x01.astype(dtype)))

    return forward


def features(params, x01, output: str = "pool3", dtype=None):
    """Inception features of NHWC images in [0, 1] (u8 / 255; any size, resized to 299):
    (B, 2048) pool3 by default. jit-compiled once per output, dtype and input shape."""
    x01 = jnp.asarray(x01)
    if x01.ndim != 4 or x01.shape[-1] != 3:
        raise ValueError(f"Inception: expected RGB NHWC images (B, H, W, 3), got {x01.shape}")
    dtype = np.dtype(dtype or x01.dtype).name
    if dtype not in ("float32", "float64"):
        dtype = "float32"
    return _compiled(output, dtype)(params, x01)


def load_inception(directory) -> tuple[dict, dict]:
    """`(params, meta)` of a converted FID Inception (`python -m convert_weights
    pt_inception-2015-12-05-6726825d.pth --out DIR`); errors name the folder."""
    import pathlib

    from jaxdiff.checkpoint import load_checkpoint, read_meta
    from jaxdiff.errors import NotFIDInceptionError

    directory = pathlib.Path(directory).expanduser()
    if not directory.exists():
        raise FileNotFoundError(
            f"FID Inception weights {str(directory)!r}: no such folder; convert pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth with `python -m convert_weights FILE --out DIR`"
        )
    if directory.is_file():
        raise NotFIDInceptionError(
            f"{directory}: a file; give the folder written by `python -m convert_weights "
            f"{directory.name} --out DIR`"
        )
    arch = read_meta(directory).get("architecture")
    if arch != "fid_inception":
        raise NotFIDInceptionError(
            f"{directory}: a converted {arch!r} model, not the FID Inception (convert "
            "pt_inception-2015-12-05-6726825d.pth with `python -m convert_weights FILE --out DIR`)"
        )
    params, meta = load_checkpoint(directory)
    return jax.tree_util.tree_map(jnp.asarray, params), meta
