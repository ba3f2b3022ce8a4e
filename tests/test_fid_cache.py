"""The FID reference cache: keyed by content (not file names), kept in the user's cache folder
(never beside the Inception weights), and a run whose FID cannot be computed still finishes with
its per-image results and a summary that says why. A cheap stand-in for the Inception keeps
these fast; tests/test_fid_driver.py runs the real network."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from configs import baselines
from jaxdiff import data as jdata
from jaxdiff import runs
from jaxdiff.images import load_images
from jaxdiff.metrics import distribution as dist


class FakeScorer:
    """InceptionScorer's interface: features are a fixed random projection of the 8-bit image."""

    calls = 0

    def __init__(self, directory, batch_size: int = 8):
        self.dir = pathlib.Path(directory)
        self.sha256 = "ab" * 32

    def features(self, x):
        FakeScorer.calls += 1
        u8 = jdata.to_uint8(np.asarray(x, np.float32)).reshape(len(x), -1) / 255.0
        proj = np.random.default_rng(0).standard_normal((u8.shape[1], 16))
        return (u8 @ proj).astype(np.float32)


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))  # documented
    monkeypatch.setattr(runs, "InceptionScorer", FakeScorer)
    return tmp_path / "cache"


def _photos(folder, n=3, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        jdata.save_png(folder / f"{i:02d}.png", rng.uniform(-1, 1, (16, 16, 3)))
    return folder


def test_reference_cache_is_keyed_by_content_not_names(tmp_path):
    folder = _photos(tmp_path / "data")
    scorer = FakeScorer(tmp_path / "inception")
    f1, p1, cached = dist.reference_features(scorer, str(folder), load_images(str(folder), 16), 16)
    assert not cached and p1.is_file()
    f2, p2, cached = dist.reference_features(scorer, str(folder), load_images(str(folder), 16), 16)
    assert cached and p2 == p1
    np.testing.assert_array_equal(f1, f2)
    # same folder, same names, one image's bytes changed: the stale features must not be read
    jdata.save_png(folder / "01.png", np.zeros((16, 16, 3)))
    images = load_images(str(folder), 16)
    f3, p3, cached = dist.reference_features(scorer, str(folder), images, 16)
    assert not cached and p3 != p1
    np.testing.assert_array_equal(f3, scorer.features(images.arrays))
    assert not np.array_equal(f3[1], f1[1])
    # other weights or another size: other keys too
    other = FakeScorer(tmp_path / "inception")
    other.sha256 = "cd" * 32
    assert not dist.reference_features(other, str(folder), images, 16)[2]
    assert dist.reference_key(images, 16, scorer.sha256) != dist.reference_key(
        images, 8, scorer.sha256
    )


def test_default_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(dist.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dist.default_cache_dir() == tmp_path / "xdg" / "jaxdiff"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dist.default_cache_dir() == tmp_path / "home" / ".cache" / "jaxdiff"


def _config(data, n, inception):
    c = baselines.get_config("measurement,box")
    c.data, c.num_images = str(data), n
    c.metrics.inception, c.metrics.fid_sqrtm, c.metrics.kid_subsets = str(inception), "svd", 3
    return c


def test_the_weights_folder_is_never_written_and_an_unwritable_cache_costs_nothing(
    tmp_path, cache_env, monkeypatch
):
    inception = tmp_path / "inception"
    inception.mkdir()
    (inception / "jaxdiff.json").write_text("{}")
    data = _photos(tmp_path / "data", 2)
    s = runs.run(_config(data, 2, inception), tmp_path / "w1", progress=False)
    assert np.isfinite(s["set_metrics"]["fid"]) and np.isfinite(s["set_metrics"]["kid"])
    assert sorted(p.name for p in inception.iterdir()) == ["jaxdiff.json"]  # nothing added
    assert pathlib.Path(s["set_metrics"]["reference"]).parent == cache_env / "fid_reference"
    # a cache folder that cannot be made (here: under a file) is recomputed, not fatal
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(dist.CACHE_ENV, str(tmp_path / "file" / "cache"))
    s2 = runs.run(_config(data, 2, inception), tmp_path / "w2", progress=False)
    assert s2["set_metrics"]["fid"] == pytest.approx(s["set_metrics"]["fid"])
    assert not s2["set_metrics"]["reference_cached"]


def test_one_image_keeps_its_results_and_says_fid_is_not_computable(tmp_path):
    data = _photos(tmp_path / "data", 1)
    for _ in range(2):  # the run, then a resume: both finish with a summary
        s = runs.run(_config(data, 1, tmp_path / "inception"), tmp_path / "w", progress=False)
        sm = s["set_metrics"]
        assert sm["fid"] is None and sm["kid"] is None
        assert "not computable" in sm["note"] and "at least 2 images" in sm["note"]
        assert (
            s["num_images"] == 1
            and len((tmp_path / "w" / "results.jsonl").read_text().splitlines()) == 1
        )
        md = (tmp_path / "w" / "summary.md").read_text()
        assert "not computable" in md
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["set_metrics"]["n"] == 1
