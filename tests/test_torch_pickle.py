"""The torch-free checkpoint reader: fixtures written by real torch, plus hand-written files
(a minimal torch.save emulator below) for views, dtypes, nesting, attacks and damage."""

import collections
import io
import json
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdiff.convert import torch_pickle as tp
from jaxdiff.errors import CheckpointError, UnsafePickleError

# -- a minimal torch.save emulator (writes the two on-disk layouts without torch) ----------------

_TYPE_NAMES = {v: k for k, v in tp._STORAGE_DTYPES.items() if k != "UntypedStorage"}


class G:
    """A global written by name: the module need not exist on this machine."""

    def __init__(self, qualname: str):
        self.module, self.name = qualname.rsplit(".", 1)

    def __call__(self, *args):
        raise AssertionError("never called")


class Call:
    """Pickles as ``qualname(*args)``: how an attacker gets code run at load time."""

    def __init__(self, qualname: str, *args):
        self.fn, self.args = G(qualname), args

    def __reduce__(self):
        return self.fn, self.args


class FakeStorage:
    def __init__(self, key: str, data: np.ndarray, view=None):
        self.key, self.data, self.view = key, np.ascontiguousarray(data).ravel(), view


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset=0, size=None, stride=None):
        size = storage.data.shape if size is None else size
        if stride is None:
            stride = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
        self.args = (storage, offset, tuple(size), tuple(stride))

    def __reduce__(self):
        hooks = collections.OrderedDict()
        return G("torch._utils._rebuild_tensor_v2"), (*self.args, False, hooks)


def tensor(key: str, array) -> FakeTensor:
    array = np.asarray(array)
    return FakeTensor(FakeStorage(key, array), 0, array.shape)


class _Writer(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, f, legacy: bool):
        super().__init__(f, protocol=2)
        self.legacy, self.storages = legacy, {}

    def _save_g(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[G] = _save_g

    def persistent_id(self, obj):
        if not isinstance(obj, FakeStorage):
            return None
        if obj.view is None:
            self.storages[obj.key] = obj
        stype = G("torch." + _TYPE_NAMES[obj.data.dtype])
        pid = ("storage", stype, obj.key, "cpu", obj.data.size)
        return pid + (obj.view,) if self.legacy else pid


def write_zip(path, obj, prefix="archive", byteorder="little", drop_record=None):
    buf = io.BytesIO()
    w = _Writer(buf, legacy=False)
    w.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", buf.getvalue())
        zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, s in w.storages.items():
            if key != drop_record:
                data = s.data.byteswap() if byteorder == "big" else s.data
                zf.writestr(f"{prefix}/data/{key}", data.tobytes())
        zf.writestr(f"{prefix}/version", "3\n")
    return path


def write_legacy(path, obj):
    buf = io.BytesIO()
    for header in (tp.LEGACY_MAGIC, tp.LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    w = _Writer(buf, legacy=True)
    w.dump(obj)
    roots = [k for k, s in w.storages.items() if s.view is None]
    pickle.dump(roots, buf, protocol=2)
    for key in roots:
        data = w.storages[key].data
        buf.write(struct.pack("<q", data.size) + data.tobytes())
    path.write_bytes(buf.getvalue())
    return path


# -- real torch files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt", [("adm_tiny.pt", "pt-zip"), ("adm_tiny_legacy.pt", "pt-legacy")]
)
def test_fixture_counts(fixtures_dir, name, fmt):
    meta = json.loads((fixtures_dir / name.replace(".pt", ".json")).read_text())
    sd = tp.load_state_dict(fixtures_dir / name)
    assert tp.checkpoint_format(fixtures_dir / name) == fmt
    assert len(sd) == meta["num_state_dict_entries"]
    assert sum(v.size for v in sd.values()) == meta["num_parameters"]
    assert {v.dtype for v in sd.values()} == {np.dtype(np.float32)}
    assert sd["time_embed.0.weight"].shape == (128, 32)
    assert sd["input_blocks.0.0.weight"].shape == (32, 3, 3, 3)
    w = sd["input_blocks.0.0.weight"]
    assert 0.02 < w.std() < 0.08 and w.flags.writeable  # N(0, 0.05^2) draws, not garbage


def test_bin_equals_safetensors_bitwise_after_renames(fixtures_dir):
    old = tp.load_state_dict(fixtures_dir / "diffusers_tiny_oldkeys/diffusion_pytorch_model.bin")
    new = load_file(str(fixtures_dir / "diffusers_tiny/diffusion_pytorch_model.safetensors"))
    renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

    def rename(k):
        parts = k.split(".")
        if "attentions" in parts and parts[-2] in renames:
            parts[-2] = renames[parts[-2]]
        return ".".join(parts)

    assert sum(rename(k) != k for k in old) == 32
    old = {rename(k): v for k, v in old.items()}
    assert old.keys() == new.keys()
    for k, v in new.items():
        assert old[k].shape == v.shape and old[k].dtype == v.dtype, k
        assert old[k].tobytes() == v.tobytes(), k


def test_prefix_is_not_hard_coded(fixtures_dir, tmp_path):
    src = fixtures_dir / "adm_tiny.pt"
    dst = tmp_path / "renamed.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr("archive/" + info.filename.split("/", 1)[1], zin.read(info))
    a, b = tp.load_state_dict(src), tp.load_state_dict(dst)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# -- hand-written files: views, dtypes, containers ----------------------------------------------


def _rich_object():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(24).astype(np.float32)
    shared = FakeStorage("7", base)
    want = {
        "w": base.reshape(4, 6),
        "w_t": base.reshape(4, 6).T,  # non-contiguous view of the same storage
        "tail": base[10:16].reshape(2, 3),  # storage offset
        "bf16": np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(3, 2),
        "half": np.linspace(-1, 1, 5).astype(np.float16),
        "steps": np.array(12345678901, np.int64),  # 0-d
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }
    sd = collections.OrderedDict(
        w=FakeTensor(shared, 0, (4, 6)),
        w_t=FakeTensor(shared, 0, (6, 4), (1, 6)),
        tail=FakeTensor(shared, 10, (2, 3)),
        bf16=tensor("1", want["bf16"]),
        half=tensor("2", want["half"]),
        steps=tensor("3", want["steps"]),
        mask=tensor("4", want["mask"]),
        empty=FakeTensor(FakeStorage("5", np.zeros(0, np.float32)), 0, (0, 3), (3, 1)),
    )
    return {"state_dict": sd, "epoch": 3, "note": "hello"}, want


@pytest.mark.parametrize("layout", ["zip", "legacy", "zip-big-endian"])
def test_views_dtypes_and_nesting(tmp_path, layout):
    obj, want = _rich_object()
    path = tmp_path / "rich.pt"
    if layout == "legacy":
        write_legacy(path, obj)
    else:
        write_zip(path, obj, byteorder="big" if layout.endswith("big-endian") else "little")
    raw = tp.load(path)
    assert raw["epoch"] == 3 and raw["note"] == "hello"
    sd = tp.load_state_dict(path)
    assert sd.keys() == want.keys()
    for k, v in want.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_legacy_storage_views(tmp_path):
    root = FakeStorage("root", np.arange(10, dtype=np.float32))
    obj = {"a": FakeTensor(root), "b": FakeTensor(_ViewOf(root, "v", 4, 4), 1, (2,))}
    got = tp.load_state_dict(write_legacy(tmp_path / "v.pt", obj))
    np.testing.assert_array_equal(got["a"], np.arange(10))
    np.testing.assert_array_equal(got["b"], [5, 6])


class _ViewOf(FakeStorage):
    """A legacy storage view: pid carries the root's key and (view_key, offset, numel)."""

    def __init__(self, root, view_key, offset, numel):
        super().__init__(root.key, root.data, view=(view_key, offset, numel))


def test_select_state_dict():
    a = {"x": np.zeros(2), "y": np.ones(3)}
    assert tp.select_state_dict(a) == a
    assert tp.select_state_dict({"state_dict": a, "step": 5}) == a
    stripped = tp.select_state_dict({"module.x": a["x"], "module.y": a["y"]})
    assert stripped.keys() == {"x", "y"}
    both = {"state_dict": a, "ema": {"x": np.full(2, 7.0)}}
    with pytest.raises(CheckpointError, match=r"several tensor dicts: 'state_dict' \(2 tensors\)"):
        tp.select_state_dict(both, "f.pt")
    assert tp.select_state_dict(both, key="ema")["x"][0] == 7.0
    with pytest.raises(CheckpointError, match="no entry 'emma'"):
        tp.select_state_dict(both, key="emma")
    with pytest.raises(CheckpointError, match=r"f.pt: no dict of tensors.*'epoch'"):
        tp.select_state_dict({"epoch": 1}, "f.pt")


# -- attacks --------------------------------------------------------------------------------------


def _payload(marker):
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def test_payload_is_live_with_plain_pickle(tmp_path):
    """Guards the tests below: the same bytes DO run code under the standard unpickler."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    _Writer(buf, legacy=False).dump(Call("builtins.eval", _payload(marker)))
    pickle.loads(buf.getvalue())
    assert marker.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("qualname", ["builtins.eval", "os.system"])
def test_forbidden_global_is_refused(tmp_path, layout, qualname):
    marker = tmp_path / "pwned"
    arg = _payload(marker) if qualname == "builtins.eval" else f"touch {marker}"
    obj = collections.OrderedDict(ok=tensor("0", np.ones(2, np.float32)), bad=Call(qualname, arg))
    path = tmp_path / "evil.pt"
    write_zip(path, obj) if layout == "zip" else write_legacy(path, obj)
    with pytest.raises(UnsafePickleError, match=rf"evil.pt: refused to load global '{qualname}'"):
        tp.load_state_dict(path)
    assert not marker.exists()


def test_foreign_persistent_id_is_refused(tmp_path):
    class Module:
        pass

    class W(_Writer):
        def persistent_id(self, obj):
            return ("module", "os", "source", "") if isinstance(obj, Module) else None

    buf = io.BytesIO()
    W(buf, legacy=False).dump({"m": Module()})
    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/data.pkl", buf.getvalue())
    with pytest.raises(UnsafePickleError, match="refused persistent id 'module'"):
        tp.load(path)


# -- damage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adm_tiny.pt", "adm_tiny_legacy.pt"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.999])
def test_truncated_files(fixtures_dir, tmp_path, name, keep):
    data = (fixtures_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=rf"{name}.*(truncated|corrupt)"):
        tp.load_state_dict(path)


def test_corrupt_storage_bytes_fail_crc(fixtures_dir, tmp_path):
    data = bytearray((fixtures_dir / "adm_tiny.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside some storage record
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="flipped.pt"):
        tp.load_state_dict(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PyTorch checkpoint"),
        (np.random.default_rng(1).bytes(4096), "not a PyTorch checkpoint"),
        (b"\x80\x02}q\x00." + bytes(20), "not a torch checkpoint"),  # a pickle, no magic
        (b"\x80\x02" + np.random.default_rng(2).bytes(500), "corrupt"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"junk.pt.*{message}"):
        tp.load_state_dict(path)


def test_zip_without_data_pkl_and_folder(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="other.zip: a zip archive but not a torch"):
        tp.load(path)
    with pytest.raises(CheckpointError, match="is a folder"):
        tp.load(tmp_path)


def test_missing_storage_record(tmp_path):
    obj = {"a": tensor("0", np.ones(3, np.float32)), "b": tensor("1", np.ones(2, np.float32))}
    path = write_zip(tmp_path / "hole.pt", obj, drop_record="1")
    with pytest.raises(CheckpointError, match=r"hole.pt: missing storage record 'archive/data/1'"):
        tp.load(path)


def test_view_past_storage_end(tmp_path):
    obj = {"a": FakeTensor(FakeStorage("0", np.ones(4, np.float32)), 2, (3,))}
    with pytest.raises(CheckpointError, match="runs past its storage '0' of 4 elements"):
        tp.load(write_zip(tmp_path / "short.pt", obj))


def test_stride_zero_expansion_is_refused(tmp_path):
    """One stored element viewed as a 32768 x 16384 tensor (2 GiB once materialised)."""
    obj = {"a": FakeTensor(FakeStorage("0", np.ones(1, np.float32)), 0, (32768, 16384), (0, 0))}
    with pytest.raises(CheckpointError, match="overlapping strides"):
        tp.load(write_zip(tmp_path / "bomb.pt", obj))


class _Build:
    """Pickles as GLOBAL target + BUILD(state): an attempt to mutate an allow-listed object."""

    def __init__(self, qualname: str, state):
        self.target, self.state = G(qualname), state


def _save_build(self, obj):
    self.save(obj.target)
    self.save(obj.state)
    self.write(pickle.BUILD)


_Writer.dispatch[_Build] = _save_build


@pytest.mark.parametrize(
    "qualname", ["torch.FloatStorage", "torch._utils._rebuild_tensor_v2", "collections.OrderedDict"]
)
def test_build_on_an_allow_listed_global_is_refused_and_changes_nothing(tmp_path, qualname):
    state = {"dtype": None, "name": "x", "_fn": None}  # would break every later load
    obj = {"ok": tensor("0", np.ones(2, np.float32)), "evil": _Build(qualname, state)}
    path = write_zip(tmp_path / "build.pt", obj)
    with pytest.raises(UnsafePickleError, match=f"BUILD on the allow-listed '{qualname}'"):
        tp.load(path)
    # the reader's shared state is intact: a clean file still loads with the right dtype
    clean = write_zip(tmp_path / "clean.pt", {"w": tensor("0", np.arange(3, dtype=np.float32))})
    sd = tp.load_state_dict(clean)
    assert sd["w"].dtype == np.float32 and sd["w"].tolist() == [0.0, 1.0, 2.0]
