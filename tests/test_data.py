"""Image I/O at the edges: decoding, the DPS transform, corrupt files, atomic writes."""

import numpy as np
import pytest
from PIL import Image

from jaxdiff import data


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
    names, images, errors = data.load_folder(tmp_path, size=8)
    assert names == ["a.png", "c.jpg"]
    assert images.shape == (2, 8, 8, 3)
    assert list(errors) == ["b.png"] and "b.png" in errors["b.png"]


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
