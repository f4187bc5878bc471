"""Offline pretrained weights: architectures Keras lacks, PyTorch checkpoint reading."""

from keras_transfer.backbones.zoo.efficientnet_lite import efficientnet_lite
from keras_transfer.backbones.zoo.imagenet import decode_imagenet, imagenet_class_names
from keras_transfer.backbones.zoo.mobilenet_v2_torchvision import (
    mobilenet_v2_torchvision,
)
from keras_transfer.backbones.zoo.torch_checkpoint import (
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

__all__ = [
    "UnsafeCheckpointError",
    "decode_imagenet",
    "efficientnet_lite",
    "imagenet_class_names",
    "load_torch_checkpoint",
    "mobilenet_v2_torchvision",
]
