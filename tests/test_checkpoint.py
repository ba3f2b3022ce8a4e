"""Orbax params + jaxdiff.json sidecar: round trip, atomic writes, clear errors."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import checkpoint as ck
from jaxdiff.errors import CheckpointError

META = {"architecture": "adm", "model_config": {"channel_mult": (1, 2), "num_heads": 4}}


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv_in": {"kernel": rng.standard_normal((3, 3, 3, 8)), "bias": np.zeros(8, np.float32)},
        "dense": {"kernel": jnp.asarray(rng.standard_normal((8, 4)), jnp.bfloat16)},
    }


def _kernel(seed):
    return _params(seed)["conv_in"]["kernel"].astype(np.float32)


def test_round_trip(tmp_path):
    params = _params()
    out = ck.save_pretrained(tmp_path / "ckpt", params, META)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left behind
    assert sorted(os.listdir(out)) == ["jaxdiff.json", "params"]
    for f in (out / "params").rglob("*"):  # no machine path (orbax's commit marker names one)
        assert not f.is_file() or str(tmp_path).encode() not in f.read_bytes(), f
    got, meta = ck.load_checkpoint(tmp_path / "ckpt")
    assert meta["format_version"] == 1 and meta["architecture"] == "adm"
    assert meta["model_config"]["channel_mult"] == [1, 2]
    assert meta["num_parameters"] == 3 * 3 * 3 * 8 + 8 + 8 * 4 == ck.count_parameters(got)
    for path in (("conv_in", "kernel"), ("conv_in", "bias"), ("dense", "kernel")):
        want = np.asarray(params[path[0]][path[1]], np.float32)
        assert got[path[0]][path[1]].dtype == np.float32
        np.testing.assert_array_equal(got[path[0]][path[1]], want)
    assert json.loads((out / "jaxdiff.json").read_text()) == meta


def test_existing_dir_needs_force(tmp_path):
    d = tmp_path / "ckpt"
    ck.save_pretrained(d, _params(0), META)
    before = (d / "jaxdiff.json").read_text()
    with pytest.raises(FileExistsError, match="ckpt already exists; pass force=True"):
        ck.save_pretrained(d, _params(1), {**META, "architecture": "unet2d"})
    assert (d / "jaxdiff.json").read_text() == before
    ck.save_pretrained(d, _params(1), {**META, "architecture": "unet2d"}, force=True)
    got, meta = ck.load_checkpoint(d)
    assert meta["architecture"] == "unet2d"
    np.testing.assert_array_equal(got["conv_in"]["kernel"], _kernel(1))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_force_never_replaces_a_foreign_folder(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("precious")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(FileExistsError, match="work is a non-empty folder without jaxdiff.json"):
        ck.save_pretrained(tmp_path / "work", _params(), META, force=True)
    with pytest.raises(FileExistsError, match="file exists and is not a folder"):
        ck.save_pretrained(tmp_path / "file", _params(), META, force=True)
    assert (tmp_path / "work" / "notes.txt").read_text() == "precious"
    assert (tmp_path / "file").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    ck.save_pretrained(tmp_path / "empty", _params(), META, force=True)
    assert sorted(os.listdir(tmp_path)) == ["empty", "file", "work"]


def test_replace_without_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "_exchange", lambda a, b: False)
    d = tmp_path / "ckpt"
    ck.save_pretrained(d, _params(0), META)
    ck.save_pretrained(d, _params(1), META, force=True)
    np.testing.assert_array_equal(ck.load_checkpoint(d)[0]["conv_in"]["kernel"], _kernel(1))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


@pytest.mark.parametrize("existing", [False, True])
def test_failure_leaves_nothing_half_written(tmp_path, monkeypatch, existing):
    d = tmp_path / "ckpt"
    if existing:
        ck.save_pretrained(d, _params(0), META)
    old = d.exists() and (d / "jaxdiff.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_move_into_place", boom)  # after params were written to the temp
    with pytest.raises(OSError, match="disk full"):
        ck.save_pretrained(d, _params(1), META, force=True)
    assert sorted(os.listdir(tmp_path)) == (["ckpt"] if existing else [])
    if existing:
        assert (d / "jaxdiff.json").read_text() == old


def test_bad_meta_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"lacks \['model_config'\]"):
        ck.save_pretrained(tmp_path / "c", _params(), {"architecture": "adm"})
    with pytest.raises(ValueError, match="params is empty"):
        ck.save_pretrained(tmp_path / "c", {}, META)
    assert os.listdir(tmp_path) == []


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such checkpoint folder"):
        ck.load_checkpoint(tmp_path / "nope")
    (tmp_path / "file.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="file.pt: a file, not a jaxdiff checkpoint"):
        ck.load_checkpoint(tmp_path / "file.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: not a jaxdiff checkpoint: no jaxdiff.json"):
        ck.load_checkpoint(tmp_path / "empty")

    d = ck.save_pretrained(tmp_path / "ckpt", _params(), META)
    sidecar = d / "jaxdiff.json"
    good = json.loads(sidecar.read_text())
    sidecar.write_text('{"format_version": 1, "architecture": ')
    with pytest.raises(CheckpointError, match="jaxdiff.json: corrupt JSON"):
        ck.load_checkpoint(d)
    sidecar.write_text(json.dumps({**good, "format_version": 7}))
    with pytest.raises(CheckpointError, match="unknown format_version 7"):
        ck.load_checkpoint(d)
    sidecar.write_text(json.dumps({k: v for k, v in good.items() if k != "model_config"}))
    with pytest.raises(CheckpointError, match=r"missing field\(s\) \['model_config'\]"):
        ck.load_checkpoint(d)
    sidecar.write_text(json.dumps({**good, "num_parameters": 5}))
    with pytest.raises(CheckpointError, match="says 5 parameters"):
        ck.load_checkpoint(d)
    sidecar.write_text(json.dumps(good))
    ck.load_checkpoint(d)  # restored: loads again
    os.rename(d / "params", d / "moved")
    with pytest.raises(CheckpointError, match="no params/ folder"):
        ck.load_checkpoint(d)
    (d / "params").mkdir()
    with pytest.raises(CheckpointError, match="cannot restore parameters"):
        ck.load_checkpoint(d)


def test_non_finite_and_absurd_weights_are_refused_by_name(tmp_path):
    params = _params()
    params["conv_in"]["bias"] = np.array([0, np.nan, np.inf, 1, 0, 0, 0, 0], np.float32)
    with pytest.raises(CheckpointError, match=r"non-finite.*\['conv_in'\]\['bias'\] \(2 of 8\)"):
        ck.save_pretrained(tmp_path / "nan", params, META)
    params["conv_in"]["bias"] = np.full(8, 9e35, np.float32)
    with pytest.raises(CheckpointError, match=r"above 100000.*\['conv_in'\]\['bias'\]"):
        ck.save_pretrained(tmp_path / "huge", params, META)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "huge").exists()
    ck.save_pretrained(tmp_path / "ok", params, META, max_abs=None)  # the override


def test_a_damaged_params_folder_is_detected_on_load(tmp_path):
    d = ck.save_pretrained(tmp_path / "ckpt", _params(), META)
    meta = json.loads((d / "jaxdiff.json").read_text())
    assert meta["params_sha256"] == ck.params_digest(ck.load_checkpoint(d)[0])
    # weights changed behind the sidecar's back (what XORed bytes in an orbax file decode to)
    ck.save_pretrained(tmp_path / "other", _params(seed=1), META)
    for f in (d / "params").rglob("*"):
        if f.is_file():
            f.unlink()
    for f in (tmp_path / "other" / "params").rglob("*"):
        if f.is_file():
            target = d / "params" / f.relative_to(tmp_path / "other" / "params")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="not the ones that were written"):
        ck.load_checkpoint(d)
    ck.load_checkpoint(d, verify=False)  # readable, just not what the sidecar describes
    # bytes flipped inside the largest data file: refused one way or the other
    big = {"w": np.random.default_rng(0).standard_normal(4096).astype(np.float32)}
    ck.save_pretrained(tmp_path / "flip", big, META)
    files = [p for p in (tmp_path / "flip" / "params").rglob("d/*") if p.is_file()]
    data = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 64] = bytes(b ^ 0x5A for b in raw[mid : mid + 64])
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(tmp_path / "flip")


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".ckpt.tmp-{pid}-deadbeef"
    (stale / "params").mkdir(parents=True)
    live = tmp_path / f".ckpt.tmp-{os.getppid()}-cafe0000"  # a running process: kept
    live.mkdir()
    other = tmp_path / f".other.tmp-{pid}-deadbeef"  # another checkpoint's: not ours to touch
    other.mkdir()
    ck.save_pretrained(tmp_path / "ckpt", _params(), META)
    assert not stale.exists() and live.exists() and other.exists()


def test_a_diffusion_sidecar_without_its_schedule_is_named(tmp_path):
    import shutil

    import jaxdiff
    from jaxdiff.models import load_pretrained

    src = os.path.join(os.path.dirname(jaxdiff.__file__), "assets", "demo_prior")
    d = tmp_path / "prior"
    shutil.copytree(src, d)
    meta = json.loads((d / "jaxdiff.json").read_text())
    del meta["diffusion"]
    (d / "jaxdiff.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"prior/jaxdiff.json: no 'diffusion' entry"):
        load_pretrained(d)


def test_a_sidecar_without_a_digest_is_refused_until_sealed(tmp_path, capsys):
    # corrupted-looking weights (finite, 1e30) whose sidecar lost its digest: nothing to verify
    bad = _params()
    bad["conv_in"]["bias"] = np.full(8, 1e30, np.float32)
    for name, params in (("bad", bad), ("good", _params())):
        d = ck.save_pretrained(tmp_path / name, params, META, max_abs=None)
        meta = json.loads((d / "jaxdiff.json").read_text())
        del meta["params_sha256"]
        (d / "jaxdiff.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match=r"carries no params_sha256.*jaxdiff.checkpoint"):
            ck.load_checkpoint(d)
    # sealing checks the weights as a save does before it records their digest
    assert ck.main([str(tmp_path / "bad")]) == 2
    assert "above 100000" in capsys.readouterr().err
    assert ck.main([str(tmp_path / "good")]) == 0
    params, meta = ck.load_checkpoint(tmp_path / "good")
    assert meta["params_sha256"] == ck.params_digest(params)
    meta["params_sha256"] = "not-a-digest"
    (tmp_path / "good" / "jaxdiff.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="is not a SHA-256"):
        ck.load_checkpoint(tmp_path / "good")
