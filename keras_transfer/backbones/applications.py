"""Keras Applications backbones: one table row per constructor."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile

import keras

from keras_transfer.backbones.registry import BackboneSpec
from keras_transfer.backbones.weights import (
    WeightsUnavailableError,
    keras_cache_dir,
    load_keras_weights,
    local_weights_path,
)

# Layer-name patterns whose first group identifies a block (stage) in each family.
# Families whose layers are auto-named (Inception, NASNet) are split by depth.
_CONVNEXT = r"_(?:downsampling_block|stage)_(\d+)"
_DENSENET = r"^(?:conv|pool)(\d+)_"
_EFFICIENTNET = r"^block(\d+)"
_MOBILENET = r"^conv_(?:dw|pw)_(\d+)"
_MOBILENET_V2 = r"^block_(\d+)_"
_MOBILENET_V3 = r"^expanded_conv(?:_(\d+))?_"
_RESNET = r"^conv(\d+)_"
_BLOCK = r"^block(\d+)_"

# (constructor, snake_case name, native size, preprocessing, block pattern)
_TABLE = [
    ("ConvNeXtTiny", "convnext_tiny", 224, "none", _CONVNEXT),
    ("ConvNeXtSmall", "convnext_small", 224, "none", _CONVNEXT),
    ("ConvNeXtBase", "convnext_base", 224, "none", _CONVNEXT),
    ("ConvNeXtLarge", "convnext_large", 224, "none", _CONVNEXT),
    ("ConvNeXtXLarge", "convnext_xlarge", 224, "none", _CONVNEXT),
    ("DenseNet121", "densenet121", 224, "torch", _DENSENET),
    ("DenseNet169", "densenet169", 224, "torch", _DENSENET),
    ("DenseNet201", "densenet201", 224, "torch", _DENSENET),
    ("EfficientNetB0", "efficientnet_b0", 224, "none", _EFFICIENTNET),
    ("EfficientNetB1", "efficientnet_b1", 240, "none", _EFFICIENTNET),
    ("EfficientNetB2", "efficientnet_b2", 260, "none", _EFFICIENTNET),
    ("EfficientNetB3", "efficientnet_b3", 300, "none", _EFFICIENTNET),
    ("EfficientNetB4", "efficientnet_b4", 380, "none", _EFFICIENTNET),
    ("EfficientNetB5", "efficientnet_b5", 456, "none", _EFFICIENTNET),
    ("EfficientNetB6", "efficientnet_b6", 528, "none", _EFFICIENTNET),
    ("EfficientNetB7", "efficientnet_b7", 600, "none", _EFFICIENTNET),
    ("EfficientNetV2B0", "efficientnet_v2_b0", 224, "none", _EFFICIENTNET),
    ("EfficientNetV2B1", "efficientnet_v2_b1", 240, "none", _EFFICIENTNET),
    ("EfficientNetV2B2", "efficientnet_v2_b2", 260, "none", _EFFICIENTNET),
    ("EfficientNetV2B3", "efficientnet_v2_b3", 300, "none", _EFFICIENTNET),
    ("EfficientNetV2S", "efficientnet_v2_s", 384, "none", _EFFICIENTNET),
    ("EfficientNetV2M", "efficientnet_v2_m", 480, "none", _EFFICIENTNET),
    ("EfficientNetV2L", "efficientnet_v2_l", 480, "none", _EFFICIENTNET),
    ("InceptionResNetV2", "inception_resnet_v2", 299, "tf", None),
    ("InceptionV3", "inception_v3", 299, "tf", None),
    ("MobileNet", "mobilenet", 224, "tf", _MOBILENET),
    ("MobileNetV2", "mobilenet_v2", 224, "tf", _MOBILENET_V2),
    ("MobileNetV3Large", "mobilenet_v3_large", 224, "none", _MOBILENET_V3),
    ("MobileNetV3Small", "mobilenet_v3_small", 224, "none", _MOBILENET_V3),
    ("NASNetLarge", "nasnet_large", 331, "tf", None),
    ("NASNetMobile", "nasnet_mobile", 224, "tf", None),
    ("ResNet50", "resnet50", 224, "caffe", _RESNET),
    ("ResNet101", "resnet101", 224, "caffe", _RESNET),
    ("ResNet152", "resnet152", 224, "caffe", _RESNET),
    ("ResNet50V2", "resnet50_v2", 224, "tf", _RESNET),
    ("ResNet101V2", "resnet101_v2", 224, "tf", _RESNET),
    ("ResNet152V2", "resnet152_v2", 224, "tf", _RESNET),
    ("VGG16", "vgg16", 224, "caffe", _BLOCK),
    ("VGG19", "vgg19", 224, "caffe", _BLOCK),
    ("Xception", "xception", 299, "tf", _BLOCK),
]


def application_specs() -> list[BackboneSpec]:
    """Returns one `BackboneSpec` per Keras Applications constructor."""
    return [
        BackboneSpec(
            name=name,
            build=functools.partial(build_application, constructor),
            build_classifier=functools.partial(
                build_application, constructor, include_top=True
            ),
            native_size=size,
            preprocessing=preprocessing,
            block_pattern=pattern,
            aliases=(constructor,),
            description=f"keras.applications.{constructor}",
        )
        for constructor, name, size, preprocessing, pattern in _TABLE
    ]


@contextlib.contextmanager
def _keep_cached_files(folder: str):
    """Restores any file in `folder` that Keras deletes while trying a download.

    Keras deletes a cached weights file whose checksum it does not expect
    before downloading again; offline, the user's file would be lost.
    """
    if not os.path.isdir(folder):
        yield
        return
    backup = tempfile.mkdtemp(prefix=".keras_transfer_keep_", dir=folder)
    kept = []
    try:
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                target = os.path.join(backup, entry.name)
                try:
                    os.link(entry.path, target)
                except OSError:
                    shutil.copy2(entry.path, target)
                kept.append(entry.name)
        yield
    finally:
        for name in kept:
            original = os.path.join(folder, name)
            if not os.path.exists(original):
                os.replace(os.path.join(backup, name), original)
        shutil.rmtree(backup, ignore_errors=True)


def _download_error(name: str, error: Exception, cache: str) -> WeightsUnavailableError:
    message = str(error)
    url = re.search(r"https?://\S+?(?=\s|:\s|$)", message)
    url = url.group(0) if url else None
    fname = os.path.basename(url) if url else "<weights file>.h5"
    placed = os.path.join(cache, "models", fname)
    lines = [
        f"Could not get the ImageNet weights of {name!r}: the download failed "
        f"(this machine may be offline). Keras said: {message}",
        "To use the weights without network access:",
        f"  1. download {url or 'the weights file'} on a machine with access;",
        f"  2. pass weights='/path/to/{fname}', or place the file at {placed}.",
        "Or pass weights=None for random initialisation.",
    ]
    if os.path.exists(placed):
        lines.insert(
            1,
            f"A file is already at {placed} (it was kept) but Keras did not accept "
            f"its checksum; pass weights={placed!r} to load it anyway.",
        )
    return WeightsUnavailableError("\n".join(lines))


def build_application(
    constructor: str,
    input_shape: tuple[int, int, int],
    weights,
    *,
    include_top: bool = False,
) -> keras.Model:
    """Builds a Keras Applications network without its top and without pooling.

    Args:
        constructor: str. Name of the `keras.applications` constructor.
        input_shape: tuple. `(height, width, 3)`.
        weights: `"imagenet"`, None or a path to a local weights file of the
            network as built (Keras' `*_notop.h5` files without the top).
        include_top: bool. Build the ImageNet classifier instead (its top is
            kept for `TransferModel(keep_top=True)`).
    """
    build = getattr(keras.applications, constructor)
    kwargs = dict(include_top=include_top, input_shape=tuple(input_shape))
    if not include_top:
        kwargs["pooling"] = None
    if weights is None:
        return build(weights=None, **kwargs)
    if weights == "imagenet":
        cache = keras_cache_dir()
        with _keep_cached_files(os.path.join(cache, "models")):
            try:
                return build(weights="imagenet", **kwargs)
            except Exception as error:  # Keras raises a bare Exception
                if "URL fetch failure" not in str(error):
                    raise
                failure = error
        # Outside the `with`: the cached files are back in place by now.
        raise _download_error(constructor, failure, cache) from failure
    top = "with" if include_top else "without"
    path = local_weights_path(
        weights,
        f"Pass the path of a weights file for {constructor} {top} its top, "
        "'imagenet' or None.",
    )
    model = build(weights=None, **kwargs)
    load_keras_weights(
        model,
        path,
        f"The file must hold the weights of the network built with "
        f"include_top={include_top}"
        + ("." if include_top else " (Keras' '*_notop.h5' files)."),
    )
    return model
