"""Images in and out at the edges: files <-> NHWC float32 in [-1, 1]; atomic writes.

Everything inside jaxdiff works on [-1, 1] NHWC arrays; this module is the one place that knows
about uint8, PIL and file systems. Writes go to a temporary sibling and are renamed into place,
so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import stat
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names the file."""


def to_unit(u8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], the DPS loader's (u8/255 - 0.5)/0.5."""
    return ((np.asarray(u8, np.float32) / 255.0 - 0.5) / 0.5).astype(np.float32)


def to_uint8(x) -> np.ndarray:
    """[-1, 1] floats -> uint8, rounding and clipping (values outside [-1, 1] saturate)."""
    x = np.asarray(x, np.float64)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_short_side(img: Image.Image, short_side: int) -> Image.Image:
    """Anti-aliased (Lanczos) resize so the shorter side is `short_side`."""
    w, h = img.size
    s = short_side / min(w, h)
    size = (max(short_side, round(w * s)), max(short_side, round(h * s)))
    return img if size == (w, h) else img.resize(size, Image.Resampling.LANCZOS)


def center_crop_resize(img: Image.Image, size: int, scale: float = 1.0) -> Image.Image:
    """The one crop pipeline of folder images and demo photos: resize so the short side is
    `size * scale` (anti-aliased), then take the central `size` x `size` square
    (top = (H - size) // 2, left = (W - size) // 2). `scale=1` is the whole central square."""
    if scale < 1:
        raise ValueError(f"center_crop_resize: scale must be >= 1, got {scale}")
    img = resize_short_side(img, round(size * scale))
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_rgb8(img: Image.Image, path) -> Image.Image:
    """An 8-bit RGB image from any mode PIL decodes, at its real bit depth, or ImageReadError.

    PIL's plain convert("RGB") clips 16-bit grayscale ("I;16", "I") to 255, so a 16-bit photo
    would come out mostly white: those are scaled by 255/65535 instead. Palette images are
    expanded, CMYK and YCbCr converted; an alpha channel is dropped only where every pixel is
    opaque (what lies under transparent pixels is not part of the picture). Floating-point and
    other modes with no defined display range are refused by name.
    """
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img, dtype=np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise ImageReadError(
                f"{path}: {mode} image with values in [{a.min()}, {a.max()}], outside the "
                "16-bit range [0, 65535]; save it as 8- or 16-bit"
            )
        u8 = np.round(a * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(u8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise ImageReadError(
                f"{path}: {mode} image with transparent pixels ({int((alpha < 255).sum())} of "
                f"{alpha.size}); flatten it onto a background first"
            )
        return img.convert("RGB")
    if mode in ("1", "L", "RGB", "CMYK", "YCbCr", "RGBX"):
        return img.convert("RGB")
    raise ImageReadError(f"{path}: image mode {mode!r} has no defined RGB conversion; save as RGB")


# Images above this many pixels are skipped before their pixels are decoded: far above any
# dataset image (8k x 8k), far below what a decompression bomb asks for.
MAX_PIXELS = 8192 * 8192


def load_image(
    path: str | os.PathLike, size: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """One image file -> (H, W, 3) float32 in [-1, 1], centre-cropped and resized to `size`.

    Only a regular file is opened (a FIFO would block the open forever), and its size is read
    from the header before any pixel is decoded: more than `max_pixels` is an ImageReadError."""
    path = pathlib.Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read ({e})") from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(f"{path}: not a regular file (a FIFO, device or folder); not opened")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError(
                        f"{path}: {w}x{h} pixels, above the limit of {max_pixels} "
                        f"({st.st_size} bytes on disk); not decoded"
                    )
                img.load()
                img = to_rgb8(img, path)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: decompression bomb refused by PIL ({e}); not decoded") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e
    if size is not None:
        img = center_crop_resize(img, size)
    return to_unit(np.asarray(img))


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Image files of a folder (by suffix), sorted by name so runs are reproducible."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file in the same folder, fsync, and rename it into place."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(x):
    """The one JSON encoder for what jaxdiff writes: numpy / jax scalars and arrays as numbers
    and lists, paths as strings; anything else is an error (not a silent str())."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):  # jax arrays too
        return np.asarray(x).tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"{type(x).__name__} is not JSON-serializable")


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def encode_png(x) -> bytes:
    """(H, W, C) [-1, 1] floats (C = 1 or 3) -> PNG bytes."""
    u8 = to_uint8(x)
    if u8.ndim == 3 and u8.shape[-1] == 1:
        u8 = u8[..., 0]
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | os.PathLike, x) -> None:
    """Atomically write one [-1, 1] image as PNG."""
    atomic_write_bytes(path, encode_png(x))


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: float = 1.0) -> np.ndarray:
    """Tile rows of (H, W, 3) [-1, 1] images into one image; images are resized (nearest) to the
    first image's size so a 64x64 measurement sits beside a 256x256 reconstruction."""
    first = np.asarray(rows[0][0])
    h, w = first.shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            img = np.asarray(img, np.float32)
            if img.ndim == 2:
                img = img[..., None]
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            if img.shape[:2] != (h, w):
                ys = np.arange(h) * img.shape[0] // h
                xs = np.arange(w) * img.shape[1] // w
                img = img[ys][:, xs]
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            out[top : top + h, left : left + w] = img
    return out
