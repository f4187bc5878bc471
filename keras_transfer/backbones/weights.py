"""Where pretrained weights live on disk, and the error when they cannot be had."""

from __future__ import annotations

import os


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or loaded."""


def keras_cache_dir() -> str:
    """The folder Keras caches downloads in (`$KERAS_HOME`, default ~/.keras)."""
    from keras.src.backend.config import keras_home

    return os.path.expanduser(keras_home())


def local_weights_path(weights, hint: str) -> str:
    """Returns `weights` as an existing file path.

    Raises:
        TypeError: when `weights` is not a path.
        FileNotFoundError: when there is no such file; `hint` says what to pass.
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "Expected `weights` to be 'imagenet', None or a file path. "
            f"Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file not found. Received: weights={path!r}. {hint}"
        )
    return path


def load_keras_weights(model, path: str, hint: str) -> None:
    """`model.load_weights(path)`, with an error that says which file fits."""
    try:
        model.load_weights(path)
    except Exception as error:  # h5py and Keras raise several types
        raise ValueError(
            f"Could not load weights file {path!r} into {model.name}: {error}. {hint}"
        ) from error
