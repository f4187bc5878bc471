"""Where pretrained weights live on disk, and the error when they cannot be had."""

from __future__ import annotations

import os


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded or loaded."""


def keras_cache_dir() -> str:
    """The folder Keras caches downloads in (`$KERAS_HOME`, default ~/.keras)."""
    from keras.src.backend.config import keras_home

    return os.path.expanduser(keras_home())
