"""Convert PyTorch weights once, keep the Keras arrays in the Keras cache folder.

A cache file `<tag>-<source sha256 prefix>.npz` sits in
`$KERAS_HOME/models/keras_transfer/` next to `<file>.sha256`, the checksum of
its bytes. Both are written to temporary files first and renamed into place,
so a reader never sees half a file; a cache file whose checksum does not
match (truncated, corrupted, or its writer was killed between the two
renames) is converted again, never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable

import numpy as np

from keras_transfer.backbones.weights import keras_cache_dir
from keras_transfer.backbones.zoo.torch_checkpoint import load_torch_checkpoint

logger = logging.getLogger("keras_transfer")

_HUB_STYLE_NAME = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


def converted_cache_dir() -> str:
    """Where converted weights are cached: `$KERAS_HOME/models/keras_transfer`."""
    return os.path.join(keras_cache_dir(), "models", "keras_transfer")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_source(path: str, expected_sha256: str | None = None) -> str:
    """Returns the checkpoint's sha256 after checking it against what is expected.

    A file named the PyTorch Hub way (`name-<sha256 prefix>.pth`) must start
    with that prefix, as `torch.hub` checks after downloading.

    Raises:
        ValueError: when the file's checksum is not the expected one.
    """
    digest = file_sha256(path)
    match = _HUB_STYLE_NAME.search(os.path.basename(path))
    expected = expected_sha256 or (match.group(1) if match else None)
    if expected and not digest.startswith(expected):
        raise ValueError(
            f"Checkpoint {path!r} has sha256 {digest}, expected {expected}...: the "
            "file is truncated, corrupted or not the published one. Download or "
            "reinstall it; a renamed file of your own must not keep the "
            "'-<hash>.pth' suffix."
        )
    return digest


def _write_atomically(path: str, write: Callable[[object], None]) -> None:
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _read_verified(path: str) -> dict[str, np.ndarray] | None:
    checksum_path = path + ".sha256"
    if not os.path.exists(path):
        return None
    try:
        with open(checksum_path) as file:
            expected = file.read().strip()
    except OSError:
        expected = None
    if expected != file_sha256(path):
        logger.warning(
            "Cached weights %s fail their checksum (truncated or corrupted); "
            "converting the checkpoint again.",
            path,
        )
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        logger.warning(
            "Cached weights %s are unreadable (%s); converting again.", path, error
        )
        return None


def converted_weights(
    source: str,
    tag: str,
    convert: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    *,
    expected_sha256: str | None = None,
) -> dict[str, np.ndarray]:
    """Keras arrays for a PyTorch checkpoint, converted once and then cached.

    Args:
        source: str. Path of the PyTorch checkpoint.
        tag: str. Names the conversion (the architecture) in the cache file.
        convert: callable. State dict -> arrays; runs only on a cache miss.
        expected_sha256: str or None. The checkpoint's known checksum.

    Returns:
        The converted arrays, by key.
    """
    digest = check_source(source, expected_sha256)
    folder = converted_cache_dir()
    path = os.path.join(folder, f"{tag}-{digest[:16]}.npz")
    arrays = _read_verified(path)
    if arrays is not None:
        return arrays
    arrays = convert(load_torch_checkpoint(source))
    try:
        os.makedirs(folder, exist_ok=True)
        _write_atomically(path, lambda file: np.savez(file, **arrays))
        checksum = file_sha256(path).encode()
        _write_atomically(path + ".sha256", lambda file: file.write(checksum))
    except OSError as error:
        logger.warning(
            "Could not cache converted weights in %s (%s); they will be "
            "converted again next time. Set KERAS_HOME to a writable folder.",
            folder,
            error,
        )
    return arrays
