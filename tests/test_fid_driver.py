"""FID / KID through the paper command (scripts.reproduce's runs.run, then scripts.table) on the
demo prior with a random-weight FID Inception in the real file's format: the plumbing, the
cache of the reference statistics, and "missing" (never zero) without the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import baselines, dps
from jaxdiff import data as jdata
from jaxdiff import report
from jaxdiff.errors import NotFIDInceptionError
from jaxdiff.metrics import fid as F
from jaxdiff.metrics.distribution import InceptionScorer, reference_features
from jaxdiff.metrics.inception import load_inception
from jaxdiff.runs import run
from jaxdiff.workdir import image_path
from tests.test_fid import random_state_dict, write_pth


@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    from jaxdiff.convert.core import convert

    d = tmp_path_factory.mktemp("inception")
    sd = random_state_dict(seed=3, num_batches_tracked=False)  # accepted with or without them
    src = write_pth(d / "pt_inception-2015-12-05-6726825d.pth", sd)
    meta = convert(src, d / "converted", progress=False)  # recognised by its keys
    src.unlink()
    assert meta["architecture"] == "fid_inception" and meta["num_parameters"] == 21_820_000
    params, _ = load_inception(d / "converted")
    np.testing.assert_array_equal(
        params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
        np.transpose(sd["Mixed_6b.branch7x7_2.conv.weight"], (2, 3, 1, 0)),  # OIHW -> HWIO
    )
    np.testing.assert_array_equal(
        params["Mixed_7c"]["branch_pool"]["bn"]["var"], sd["Mixed_7c.branch_pool.bn.running_var"]
    )
    return d / "converted"


def paper_config(method="dps", **metrics):
    """The README's paper command (configs/dps.py:box, or the floor of configs/baselines.py),
    on the demo prior and its photos."""
    c = dps.get_config("box") if method == "dps" else baselines.get_config(f"{method},box")
    c.sampler.respacing = "2"
    c.num_images = 2
    for k, v in metrics.items():
        setattr(c.metrics, k, v)
    return c


@pytest.mark.slow  # 20-30 s; the FID itself is checked by default in test_fid*.py
@pytest.mark.parametrize("method", ["measurement", "dps"])
def test_paper_command_fid_equals_a_direct_call(tmp_path, inception_dir, method):
    # without the weights: missing, said so, never zero; the run is then resumed with them
    s0 = run(paper_config(method), tmp_path / "dps", progress=False)
    assert s0["set_metrics"]["fid"] is None and "missing" in s0["set_metrics"]["missing"]
    assert "FID ↓ | missing" in (tmp_path / "dps" / "summary.md").read_text()
    md = report.make_table([tmp_path / "dps"])["md"].read_text()
    assert "FID / KID: missing" in md and "0.000" not in md

    c = paper_config(method, inception=str(inception_dir), fid_sqrtm="svd", kid_subsets=3)
    c.metrics.reference_stats = str(tmp_path / "ref")
    s = run(c, tmp_path / "dps", progress=False)  # same workdir: FID from the saved PNGs
    sm = s["set_metrics"]
    assert not sm["reference_cached"] and np.isfinite(sm["fid"]) and sm["n"] == 2
    scorer = InceptionScorer(inception_dir)
    names = sorted(json.loads(line)["image"] for line in open(tmp_path / "dps" / "results.jsonl"))
    recon = [jdata.load_image(image_path(tmp_path / "dps", n, "recon")) for n in names]
    truth = [jdata.load_image(image_path(tmp_path / "dps", n, "truth")) for n in names]
    fr, ft = scorer.features(np.stack(recon)), scorer.features(np.stack(truth))
    assert sm["fid"] == pytest.approx(F.fid_from_features(fr, ft, "svd"), rel=1e-6, abs=1e-6)
    assert sm["kid"] == pytest.approx(F.kid(fr, ft, subsets=3)[0], rel=1e-6, abs=1e-9)
    assert f"| FID ↓ | {sm['fid']:.3f} |" in (tmp_path / "dps" / "summary.md").read_text()

    # every other run of the table (same data, list, size, weights) reuses the reference
    from jaxdiff.images import load_images

    images = load_images("demo", 32, 2)
    _, path, cached = reference_features(scorer, "demo", images, 32, tmp_path / "ref")
    assert cached and str(path) == sm["reference"]
    t = report.make_table([tmp_path / "dps"], out=tmp_path / "t")
    md = t["md"].read_text()
    assert "FID ↓ / KID ↓" in md and f"{sm['fid']:.2f} / {sm['kid']:.4f}" in md
    rows = [r for r in t["csv"].read_text().splitlines() if ",fid," in r or ",kid," in r]
    assert len(rows) == 2


def test_wrong_or_missing_inception_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*convert_weights"):
        run(paper_config(inception=str(tmp_path / "nowhere")), tmp_path / "w", progress=False)
    demo = dps.get_config("box")
    from jaxdiff.experiment import resolve_model_dir

    with pytest.raises(NotFIDInceptionError, match="demo_prior"):
        c = paper_config(inception=str(resolve_model_dir(demo.model)))
        run(c, tmp_path / "w2", progress=False)


def test_named_image_list(tmp_path):
    from jaxdiff.images import load_images

    for i in (2, 0, 1, 7):  # 00000.png ... and a file not in the list
        jdata.save_png(tmp_path / f"{i:05d}.png", np.zeros((8, 8, 3)))
    from jaxdiff import images as image_lists

    image_lists.IMAGE_LISTS["_t"] = ("00001.png", "00000.png", "00002.jpg")
    try:
        imgs = load_images(str(tmp_path), 8, image_list="_t")
        assert imgs.names == ["00001.png", "00000.png", "00002.png"] and imgs.index == [1, 0, 2]
        image_lists.IMAGE_LISTS["_t"] = ("00003.png",)
        with pytest.raises(FileNotFoundError, match="00003"):
            load_images(str(tmp_path), 8, image_list="_t")
    finally:
        del image_lists.IMAGE_LISTS["_t"]
    dps_1k = image_lists.get_list("ffhq_dps_1k")
    assert len(dps_1k) == 1000 and dps_1k[0] == "00000.png" and dps_1k[-1] == "00999.png"
