"""Writes PyTorch checkpoints without torch, in both of PyTorch's layouts, for tests.

Stand-in `torch` modules make pickle emit the same opcodes `torch.save` does.
"""

import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np


class FakeStorage:
    def __init__(self, key, array):
        self.key, self.array = key, array


def fake_torch(monkeypatch):
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


class FakeTensor:
    def __init__(self, storage, offset, size, stride, utils):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.utils = utils

    def __reduce__(self):
        return self.utils._rebuild_tensor_v2, self.args


def write_checkpoint(path, state_arrays, layout, monkeypatch, transpose_key=None):
    torch, utils = fake_torch(monkeypatch)
    storages, state = [], collections.OrderedDict()
    for i, (name, array) in enumerate(state_arrays.items()):
        storage = FakeStorage(str(i), array)
        storages.append(storage)
        if name == transpose_key:  # a transposed view: strides out of order
            rows, cols = array.shape
            flat = np.ascontiguousarray(array.T).ravel()
            storage.array = np.concatenate([np.zeros(3, array.dtype), flat])
            state[name] = FakeTensor(storage, 3, (rows, cols), (1, rows), utils)
        else:
            strides = tuple(
                int(np.prod(array.shape[d + 1 :])) for d in range(array.ndim)
            )
            state[name] = FakeTensor(storage, 0, array.shape, strides, utils)

    def storage_type(array):
        return torch.LongStorage if array.dtype == np.int64 else torch.FloatStorage

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
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
