"""Offline pretrained weights: architectures Keras lacks, PyTorch checkpoint reading."""

from keras_transfer.backbones.zoo.torch_checkpoint import (
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

__all__ = ["UnsafeCheckpointError", "load_torch_checkpoint"]
