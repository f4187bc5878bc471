"""torchvision's MobileNetV2 in Keras 3, loading torchvision's ImageNet checkpoint.

The block layout is that of `keras.applications.MobileNetV2`, but
torchvision's weights were trained with symmetric padding (1 pixel on every
side of a 3x3 stride-2 convolution, where TensorFlow pads only bottom and
right), BatchNorm epsilon 1e-5 and torchvision's mean/std normalisation, so
Keras' own MobileNetV2 gives wrong results with them: this network is built
their way.
"""

from __future__ import annotations

import functools
import os

import keras

from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import BackboneSpec
from keras_transfer.backbones.weights import WeightsUnavailableError, keras_cache_dir
from keras_transfer.backbones.zoo.inverted_residual import (
    Stage,
    build_network,
)

_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 3, 2, 32, 3),
    Stage(6, 3, 2, 64, 4),
    Stage(6, 3, 1, 96, 3),
    Stage(6, 3, 2, 160, 3),
    Stage(6, 3, 1, 320, 1),
)
_FILE = "mobilenet_v2-b0353104.pth"
_URL = f"https://download.pytorch.org/models/{_FILE}"
_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
_EXPANDING_BLOCK = {
    "expand": "0.0",
    "expand_bn": "0.1",
    "depthwise": "1.0",
    "depthwise_bn": "1.1",
    "project": "2",
    "project_bn": "3",
}
_PLAIN_BLOCK = {
    "depthwise": "0.0",
    "depthwise_bn": "0.1",
    "project": "1",
    "project_bn": "2",
}
_HEAD_INDEX = 1 + sum(stage.repeats for stage in _STAGES)  # features.18


def _source_names(part: str, block: int, expands: bool) -> str:
    """Key prefixes of torchvision's `MobileNetV2.state_dict()`."""
    network = {
        "stem": "features.0.0",
        "stem_bn": "features.0.1",
        "head": f"features.{_HEAD_INDEX}.0",
        "head_bn": f"features.{_HEAD_INDEX}.1",
        "classifier": "classifier.1",
    }
    if part in network:
        return network[part]
    # Without expansion, torchvision's `conv` list starts at the depthwise layer.
    layout = _EXPANDING_BLOCK if expands else _PLAIN_BLOCK
    return f"features.{block + 1}.conv.{layout[part]}"


def _imagenet_checkpoint() -> tuple[str, str]:
    try:
        path = keras.utils.get_file(
            _FILE, origin=_URL, file_hash=_SHA256, cache_subdir="models"
        )
    except Exception as error:  # Keras raises a bare Exception offline
        placed = os.path.join(keras_cache_dir(), "models", _FILE)
        raise WeightsUnavailableError(
            f"Could not download torchvision's MobileNetV2 weights from {_URL} "
            f"(this machine may be offline): {error}\nTo use them without network "
            f"access, copy {_FILE} to {placed} or pass "
            f"weights='/path/to/{_FILE}'; or pass weights=None."
        ) from error
    return path, _SHA256


def mobilenet_v2_torchvision(
    *,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    include_preprocessing: bool = True,
) -> keras.Model:
    """Builds torchvision's MobileNetV2 (width 1.0) as a Keras model.

    Args:
        include_top: bool. Keep the pooling, dropout and `predictions` layers.
        weights: str or None. `"imagenet"` (torchvision's checkpoint, downloaded
            once to `$KERAS_HOME/models`), None, or the path of a PyTorch
            checkpoint in torchvision's layout (`mobilenet_v2-b0353104.pth`) or
            of a Keras `.weights.h5` file saved from this network.
        input_shape: tuple or None. Defaults to (224, 224, 3).
        classes: int. Outputs of the classifier (1000 for ImageNet weights).
        classifier_activation: str or None. None returns logits.
        include_preprocessing: bool. Take 0-255 RGB images and normalise them
            with the ImageNet mean and standard deviation inside the model.

    Returns:
        A `keras.Model` (spatial features when `include_top=False`).
    """
    return build_network(
        tuple(input_shape) if input_shape else (224, 224, 3),
        stages=list(_STAGES),
        stem_filters=32,
        head_filters=1280,
        padding="symmetric",
        epsilon=1e-5,
        source_names=_source_names,
        include_top=include_top,
        classes=classes,
        dropout=0.2,
        classifier_activation=classifier_activation,
        preprocessing=(
            ImagePreprocessing("torch", name="preprocess")
            if include_preprocessing
            else None
        ),
        weights=weights,
        imagenet=_imagenet_checkpoint,
        name="mobilenet_v2_torchvision",
    )


def _build_backbone(input_shape, weights, include_top=False):
    return mobilenet_v2_torchvision(
        include_top=include_top,
        classifier_activation=None,
        weights=weights,
        input_shape=input_shape,
        include_preprocessing=False,
    )


def backbone_specs() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name="mobilenet_v2_torchvision",
            build=_build_backbone,
            build_classifier=functools.partial(_build_backbone, include_top=True),
            native_size=224,
            preprocessing="torch",
            block_pattern=r"^block(\d+)",
            aliases=("MobileNetV2Torchvision",),
            description="torchvision's MobileNetV2 (weights: torchvision checkpoint)",
        )
    ]
