"""Image I/O at the edges: decoding, the DPS transform, corrupt files, atomic writes."""

import numpy as np
import pytest
from PIL import Image

from jaxdiff import data
from jaxdiff.data import ImageReadError, load_image
from jaxdiff.images import load_images


def test_load_image_matches_dps_transform(fixtures_dir):
    path = fixtures_dir / "op_image0_astronaut.png"
    u8 = np.asarray(Image.open(path).convert("RGB"))
    x = data.load_image(path)
    assert x.shape == (256, 256, 3) and x.dtype == np.float32
    # torchvision ToTensor + Normalize(0.5, 0.5), step by step in float32 as torch computes it.
    want = (u8.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(data.to_uint8(x), u8)  # exact round trip


def test_center_crop_resize_takes_the_centre(tmp_path):
    # A 40x20 image whose centre 20x20 square is white and the rest black.
    u8 = np.zeros((20, 40, 3), np.uint8)
    u8[:, 10:30] = 255
    Image.fromarray(u8).save(tmp_path / "wide.png")
    x = data.load_image(tmp_path / "wide.png", size=20)
    assert x.shape == (20, 20, 3)
    assert np.all(x == 1.0)


def test_corrupt_file_is_named_and_skipped(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "c.jpg")
    with pytest.raises(data.ImageReadError, match="b.png"):
        data.load_image(tmp_path / "b.png")
    imgs = load_images(str(tmp_path), 8)
    assert imgs.names == ["a.png", "c.jpg"] and imgs.index == [0, 2]
    assert imgs.arrays.shape == (2, 8, 8, 3)
    assert list(imgs.skipped) == ["b.png"] and "b.png" in imgs.skipped["b.png"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        data.list_images(tmp_path / "nope")


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "r.json"
    data.atomic_write_json(target, {"a": 1})
    data.atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_png_round_trip_and_grid(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32)
    data.save_png(tmp_path / "x.png", x)
    back = data.load_image(tmp_path / "x.png")
    assert np.max(np.abs(back - x)) <= 1.0 / 127.5  # one uint8 level
    small = np.zeros((8, 8, 1), np.float32)
    grid = data.make_grid([[x, small], [x]], pad=2)
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2, 3)
    np.testing.assert_array_equal(grid[2:18, 2:18], x)
    np.testing.assert_array_equal(grid[2:18, 20:36], 0.0)  # upsampled grey -> 3 channels


def _gray16(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)  # PIL writes a 16-bit grayscale PNG ("I;16")
    return path, ramp


def test_16bit_png_is_read_at_its_bit_depth(tmp_path):
    path, ramp = _gray16(tmp_path)
    x = load_image(path)
    want = ramp / 65535.0 * 2 - 1
    assert np.abs(x[..., 0] - want).max() <= 1.0 / 255 + 1e-6  # 8-bit rounding, not clipping
    assert np.mean(x >= 0.999) < 0.01  # plain convert("RGB") made ~79% of pixels white
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_palette_cmyk_and_opaque_alpha_convert_like_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    want = load_image(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(load_image(tmp_path / "opaque.png"), want)
    pal = Image.fromarray(rgb).quantize(colors=256)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(
        load_image(tmp_path / "pal.png"), load_image_array(pal.convert("RGB"))
    )
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert np.abs(load_image(tmp_path / "cmyk.tif") - want).max() <= 2.0 / 255


def load_image_array(img):
    return (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5


def test_transparent_and_float_images_are_refused_by_name(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "glass.png")
    with pytest.raises(ImageReadError, match=r"glass.png: RGBA image with transparent pixels"):
        load_image(tmp_path / "glass.png")
    Image.fromarray(np.full((8, 8), 3.5, np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match=r"float.tif: image mode 'F'"):
        load_image(tmp_path / "float.tif")


def test_load_share_takes_the_first_n_decodable_images(tmp_path):
    """num_images counts decodable images: a corrupt file among the first N is replaced by the
    next file (in a second round, as under several processes)."""
    from jaxdiff.images import load_share

    for name in ("a.png", "c.jpg", "d.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"not a png")
    local, names, skipped = load_share(str(tmp_path), 8, limit=2)
    assert names == local.names == ["a.png", "c.jpg"] and local.index == [0, 2]
    assert list(skipped) == ["b.png"] and local.arrays.shape == (2, 8, 8, 3)
    local, names, _ = load_share(str(tmp_path), 8)
    assert names == ["a.png", "c.jpg", "d.png"]


def _png_header(path, width, height):
    """A PNG whose header claims width x height RGB pixels, with no pixel data at all."""
    import struct
    import zlib

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_fifos_bombs_and_huge_images_are_skipped_by_name_before_decoding(tmp_path):
    import os
    import threading

    data.save_png(tmp_path / "b_ok.png", np.zeros((8, 8, 3)))
    os.mkfifo(tmp_path / "a_fifo.png")  # opening it would wait for a writer forever
    _png_header(tmp_path / "c_bomb.png", 20000, 20000)  # above PIL's own bomb limit
    _png_header(tmp_path / "d_huge.png", 13000, 13000)  # under PIL's limit: 1.1 GB decoded
    got = {}
    t = threading.Thread(target=lambda: got.update(images=load_images(str(tmp_path), 8)))
    t.daemon = True
    t.start()
    t.join(30)
    assert "images" in got, "load_images blocked (or raised) on a FIFO / bomb / huge image"
    images = got["images"]
    assert images.names == ["b_ok.png"] and images.index == [1]
    assert "not a regular file" in images.skipped["a_fifo.png"]
    assert "decompression bomb" in images.skipped["c_bomb.png"]
    assert "400000000 pixels" in images.skipped["c_bomb.png"]
    assert "13000x13000 pixels, above the limit" in images.skipped["d_huge.png"]
    # the limit is a setting: a small one skips a real image by its size
    with pytest.raises(ImageReadError, match="8x8 pixels, above the limit of 10"):
        load_image(tmp_path / "b_ok.png", 8, max_pixels=10)
