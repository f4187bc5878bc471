"""Reading PyTorch checkpoints without torch, and without running pickled code.

PyTorch writes state dicts in two formats:

- legacy (before torch 1.6): five pickles in a row (magic number, protocol
  version, system info, the object, the storage keys), then the raw bytes of
  each storage, each preceded by its element count as a little-endian int64;
- zip (torch 1.6 and later): `<name>/data.pkl` plus one `<name>/data/<key>`
  file of raw little-endian bytes per storage.

In both, tensors are pickled as calls to `torch._utils._rebuild_tensor_v2` on
storages named by "persistent ids". This reader allows exactly those globals
(plus `collections.OrderedDict` and the storage types) and refuses every other
one, so a malicious checkpoint cannot execute code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a Python global that is not a tensor or container."""


class _Storage:
    """A storage placeholder: its dtype and key, filled with data after loading."""

    __slots__ = ("dtype", "key", "array")

    def __init__(self, dtype, key):
        self.dtype = dtype
        self.key = key
        self.array = None

    def __setstate__(self, state):
        raise UnsafeCheckpointError("A checkpoint may not set storage attributes.")


def _corrupt(message):
    return ValueError(f"Corrupt checkpoint: {message}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _rebuild_tensor(storage, offset, size, stride, *_):
    if not isinstance(storage, _Storage):
        raise _corrupt(f"a tensor is built on {type(storage).__name__}, not a storage")
    size, stride = tuple(size), tuple(stride)
    if not (
        _is_int(offset)
        and offset >= 0
        and len(size) == len(stride)
        and all(_is_int(n) and n >= 0 for n in size)
        and all(_is_int(s) and s >= 0 for s in stride)
    ):
        raise _corrupt(
            f"bad tensor layout offset={offset!r} size={size} stride={stride}"
        )
    return _TensorRef(storage, offset, size, stride)


class _TensorRef:
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = (
            storage,
            offset,
            size,
            stride,
        )


def _rebuild_parameter(data, *_):
    return data


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_SAFE_GLOBALS.update({("torch", name): name for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path, persistent_load):
        super().__init__(file)
        self._path = path
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"Refusing to load {self._path!r}: it references the Python "
                f"global {module}.{name}, which is not a tensor or a container. "
                "Only state dicts of tensors can be read without torch; a "
                "checkpoint that pickles other objects may run code when loaded."
            ) from None

    def persistent_load(self, pid):
        return self._persistent(pid)


def _storage_from_pid(pid, storages):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        raise UnsafeCheckpointError(f"Unexpected persistent id in checkpoint: {pid!r}")
    # legacy: (tag, type, key, location, numel, view_metadata)
    # zip:    (tag, type, key, location, numel)
    storage_type, key = pid[1], str(pid[2])
    if storage_type not in _STORAGE_DTYPES:
        raise ValueError(
            f"Unsupported storage type in checkpoint: {pid!r}. Supported: "
            f"{sorted(_STORAGE_DTYPES)}."
        )
    if key not in storages:
        storages[key] = _Storage(np.dtype(_STORAGE_DTYPES[storage_type]), key)
    return storages[key]


def _materialise(obj):
    if isinstance(obj, _TensorRef):
        storage, offset, size, stride = obj.storage, obj.offset, obj.size, obj.stride
        if not isinstance(storage.array, np.ndarray):
            raise _corrupt(f"storage {storage.key!r} has no data")
        available = len(storage.array)
        count = int(np.prod(size, dtype=np.int64))
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if count and (extent >= available or count > available):
            raise _corrupt(
                f"a tensor of shape {size} needs {extent + 1} elements of storage "
                f"{storage.key!r}, which holds {available}: the file is truncated "
                "or corrupt."
            )
        itemsize = storage.dtype.itemsize
        array = np.lib.stride_tricks.as_strided(
            storage.array[offset:],
            shape=size,
            strides=tuple(s * itemsize for s in stride),
        )
        return np.array(array)  # a contiguous copy that owns its memory
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _no_persistent(pid):
    raise UnsafeCheckpointError(f"Unexpected persistent id in header: {pid!r}")


def _load_legacy(file, path):
    def load_plain():
        return _RestrictedUnpickler(file, path, _no_persistent).load()

    try:
        magic = load_plain()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        if isinstance(error, UnsafeCheckpointError):
            raise
        raise ValueError(f"{path!r} is not a PyTorch checkpoint: {error}") from error
    if magic != _LEGACY_MAGIC:
        raise ValueError(f"{path!r} is not a PyTorch checkpoint (bad magic number).")
    protocol = load_plain()
    if protocol != _LEGACY_PROTOCOL:
        raise ValueError(
            f"Unsupported legacy checkpoint protocol {protocol!r} in {path!r}."
        )
    system = load_plain()
    if not isinstance(system, dict):
        raise _corrupt(f"unexpected header {system!r} in {path!r}")
    if not system.get("little_endian", True):
        raise ValueError(f"Big-endian checkpoints are not supported: {path!r}")
    storages: dict[str, _Storage] = {}
    unpickler = _RestrictedUnpickler(
        file, path, lambda pid: _storage_from_pid(pid, storages)
    )
    result = unpickler.load()
    keys = load_plain()
    end = os.fstat(file.fileno()).st_size
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise _corrupt(f"storage {key!r} of {path!r} is not used by any tensor")
        header = file.read(8)
        count = struct.unpack("<q", header)[0] if len(header) == 8 else -1
        nbytes = count * storage.dtype.itemsize
        if count < 0 or nbytes > end - file.tell():
            raise ValueError(f"Checkpoint {path!r} is truncated.")
        storage.array = np.frombuffer(file.read(nbytes), dtype=storage.dtype)
    return result


def _load_zip(archive: zipfile.ZipFile, path):
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
        raise ValueError(f"{path!r} is a zip file but not a PyTorch checkpoint.")
    prefix = pickles[0][: -len("data.pkl")]
    storages: dict[str, _Storage] = {}
    with archive.open(pickles[0]) as file:
        result = _RestrictedUnpickler(
            io.BytesIO(file.read()),
            path,
            lambda pid: _storage_from_pid(pid, storages),
        ).load()
    if (
        f"{prefix}byteorder" in names
        and archive.read(f"{prefix}byteorder") != b"little"
    ):
        raise ValueError(f"Big-endian checkpoints are not supported: {path!r}")
    for key, storage in storages.items():
        try:
            data = archive.read(f"{prefix}data/{key}")
        except KeyError:
            raise _corrupt(f"storage {key!r} is missing from {path!r}") from None
        storage.array = np.frombuffer(data, dtype=storage.dtype.newbyteorder("<"))
    return result


def load_torch_checkpoint(
    path: str | os.PathLike,
    *,
    map_key: Callable[[str], str | None] | None = None,
) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into numpy arrays, without torch.

    Both of PyTorch's formats are read: the legacy pickle format and the zip
    format of `torch.save` since torch 1.6. Nothing pickled is executed: only
    the globals that tensors and containers need are allowed, anything else
    raises `UnsafeCheckpointError`.

    Args:
        path: str. The `.pth`/`.pt`/`.bin` file.
        map_key: callable or None. Renames each key (for example to the layer
            names of a Keras port); returning None drops that entry.

    Returns:
        An ordered dict from key to `np.ndarray`. A checkpoint that wraps its
        state dict (`{"state_dict": {...}}`, `{"model": {...}}`) is unwrapped.

    Example:

    >>> weights = load_torch_checkpoint("resnet18.pth")
    >>> weights["conv1.weight"].shape
    (64, 3, 7, 7)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found. Received: path={path!r}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            raw = _load_zip(archive, path)
    else:
        with open(path, "rb") as file:
            raw = _load_legacy(file, path)
    state = _materialise(raw)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(
            f"{path!r} does not hold a state dict (found {type(state).__name__})."
        )
    result = collections.OrderedDict()
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            continue  # metadata such as `_metadata` or version numbers
        new_key = map_key(key) if map_key else key
        if new_key is not None:
            result[new_key] = value
    return result
