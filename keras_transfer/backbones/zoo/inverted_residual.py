"""Inverted-residual (MBConv) networks from a stage table, with PyTorch weights.

EfficientNet-Lite and MobileNetV2 are the same kind of network: a strided
stem convolution, stages of inverted-residual blocks (1x1 expansion, depthwise
convolution, linear 1x1 projection, a residual connection when shapes allow),
a 1x1 head convolution, then pooling and a classifier. They differ in the
stage table, the padding rule, the BatchNorm epsilon and the names of their
PyTorch weights, which are the arguments here.

Keras layer names follow `keras.applications.EfficientNetB0` (`stem_conv`,
`block2a_expand_conv`, `top_conv`, `predictions`), so layer groups split by
stage with the `^block(\\d+)` pattern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import keras
import numpy as np

from keras_transfer.backbones.weights import load_keras_weights, local_weights_path
from keras_transfer.backbones.zoo.cache import converted_weights

PADDINGS = ("tensorflow", "symmetric")


@dataclasses.dataclass(frozen=True)
class Stage:
    """Blocks that share a shape: expansion ratio, kernel, first stride, filters."""

    expand: int
    kernel: int
    stride: int
    filters: int
    repeats: int


@dataclasses.dataclass(frozen=True)
class Unit:
    """A weighted Keras layer and the PyTorch key prefix its weights come from."""

    layer: str
    kind: str  # "conv", "depthwise", "batchnorm" or "dense"
    source: str


# Names a network gives its PyTorch weights: (part, block index, expands) -> prefix.
# Parts: "stem", "stem_bn", "expand", "expand_bn", "depthwise", "depthwise_bn",
# "project", "project_bn", "head", "head_bn", "classifier".
SourceNames = Callable[[str, int, bool], str]


def _conv(x, filters, kernel, stride, padding, name, depthwise=False):
    if padding == "symmetric" and stride > 1:
        x = keras.layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
        mode = "valid"
    else:
        mode = "same"  # TensorFlow's rule: stride 2 pads more at bottom/right
    if depthwise:
        return keras.layers.DepthwiseConv2D(
            kernel, stride, padding=mode, use_bias=False, name=name
        )(x)
    return keras.layers.Conv2D(
        filters, kernel, stride, padding=mode, use_bias=False, name=name
    )(x)


def build_network(
    input_shape: tuple[int, int, int],
    *,
    stages: list[Stage],
    stem_filters: int,
    head_filters: int,
    padding: str,
    epsilon: float,
    source_names: SourceNames,
    drop_connect_rate: float = 0.0,
    include_top: bool = False,
    classes: int = 1000,
    dropout: float = 0.2,
    classifier_activation: str | None = "softmax",
    preprocessing: keras.layers.Layer | None = None,
    weights=None,
    imagenet: Callable[[], tuple[str, str | None]] | None = None,
    name: str = "inverted_residual_network",
) -> keras.Model:
    """Builds the network, then loads `weights` (see `load_pretrained`).

    `source_names` says where each weighted layer's weights are in the
    network's PyTorch state dict; `imagenet` locates its ImageNet checkpoint;
    `name` also names the architecture in the conversion cache.
    """
    if padding not in PADDINGS:
        raise ValueError(
            f"Expected `padding` to be one of {PADDINGS}. Received: padding={padding!r}"
        )
    units = []

    def batchnorm(x, layer, part, block=-1, expands=False):
        units.append(Unit(layer, "batchnorm", source_names(part, block, expands)))
        return keras.layers.BatchNormalization(epsilon=epsilon, name=layer)(x)

    def record(layer, kind, part, block=-1, expands=False):
        units.append(Unit(layer, kind, source_names(part, block, expands)))

    inputs = keras.Input(shape=input_shape)
    x = preprocessing(inputs) if preprocessing is not None else inputs
    x = _conv(x, stem_filters, 3, 2, padding, "stem_conv")
    record("stem_conv", "conv", "stem")
    x = batchnorm(x, "stem_bn", "stem_bn")
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)

    total = sum(stage.repeats for stage in stages)
    block = 0
    for stage_index, stage in enumerate(stages, start=1):
        for repeat in range(stage.repeats):
            prefix = f"block{stage_index}{chr(ord('a') + repeat)}_"
            stride = stage.stride if repeat == 0 else 1
            channels = x.shape[-1]
            expands = stage.expand != 1
            shortcut = x
            if expands:
                x = _conv(
                    x, channels * stage.expand, 1, 1, padding, prefix + "expand_conv"
                )
                record(prefix + "expand_conv", "conv", "expand", block, expands)
                x = batchnorm(x, prefix + "expand_bn", "expand_bn", block, expands)
                x = keras.layers.ReLU(6.0, name=prefix + "expand_activation")(x)
            x = _conv(x, None, stage.kernel, stride, padding, prefix + "dwconv", True)
            record(prefix + "dwconv", "depthwise", "depthwise", block, expands)
            x = batchnorm(x, prefix + "bn", "depthwise_bn", block, expands)
            x = keras.layers.ReLU(6.0, name=prefix + "activation")(x)
            x = _conv(x, stage.filters, 1, 1, padding, prefix + "project_conv")
            record(prefix + "project_conv", "conv", "project", block, expands)
            x = batchnorm(x, prefix + "project_bn", "project_bn", block, expands)
            if stride == 1 and channels == stage.filters:
                rate = drop_connect_rate * block / total
                if rate > 0:
                    x = keras.layers.Dropout(
                        rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop"
                    )(x)
                x = keras.layers.Add(name=prefix + "add")([x, shortcut])
            block += 1

    x = _conv(x, head_filters, 1, 1, padding, "top_conv")
    record("top_conv", "conv", "head")
    x = batchnorm(x, "top_bn", "head_bn")
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    record("predictions", "dense", "classifier")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(
            classes, activation=classifier_activation, name="predictions"
        )(x)
    model = keras.Model(inputs, x, name=name)
    load_pretrained(model, units, weights, tag=name, imagenet=imagenet)
    return model


def _converted(kind: str, tensors: list[np.ndarray]) -> list[np.ndarray]:
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [tensors[0].transpose(2, 3, 1, 0)]
    if kind == "depthwise":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [tensors[0].transpose(2, 3, 0, 1)]
    if kind == "dense":  # (out, in) -> (in, out)
        return [tensors[0].T, tensors[1]]
    return tensors  # BatchNorm: gamma, beta, moving mean, moving variance


_SOURCE_KEYS = {
    "conv": ("weight",),
    "depthwise": ("weight",),
    "dense": ("weight", "bias"),
    "batchnorm": ("weight", "bias", "running_mean", "running_var"),
}


def convert_state_dict(
    units: list[Unit], state_dict: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Turns a PyTorch state dict into Keras arrays keyed `"<layer>/<index>"`.

    The classifier may be missing (a checkpoint without top); any other
    missing key, and any key no layer uses, is an error, so a checkpoint of
    another architecture is never half-loaded.

    Raises:
        ValueError: naming the missing or unexpected keys.
    """
    arrays, used = {}, set()
    missing = []
    for unit in units:
        keys = [f"{unit.source}.{suffix}" for suffix in _SOURCE_KEYS[unit.kind]]
        absent = [key for key in keys if key not in state_dict]
        if absent:
            if unit.layer != "predictions" or len(absent) != len(keys):
                missing.extend(absent)
            continue
        used.update(keys)
        tensors = [np.asarray(state_dict[key], dtype=np.float32) for key in keys]
        for index, array in enumerate(_converted(unit.kind, tensors)):
            arrays[f"{unit.layer}/{index}"] = np.ascontiguousarray(array)
    unexpected = sorted(
        key
        for key in state_dict
        if key not in used and not key.endswith("num_batches_tracked")
    )
    if missing or unexpected:
        raise ValueError(
            "The checkpoint does not match this architecture: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:5]}. Check that the file holds the "
            "weights of this network (and variant), or rename keys with "
            "`load_torch_checkpoint(path, map_key=...)`."
        )
    return arrays


def assign_weights(
    model: keras.Model, units: list[Unit], arrays: Mapping[str, np.ndarray]
) -> None:
    """Sets every weighted layer of `model` from converted arrays, checking shapes.

    Raises:
        ValueError: for a missing array or one whose shape does not match.
    """
    plan = []
    for unit in units:
        try:
            layer = model.get_layer(unit.layer)
        except ValueError:
            continue  # the classifier of a network built without its top
        values = []
        for index, variable in enumerate(layer.weights):
            key = f"{unit.layer}/{index}"
            if key not in arrays:
                raise ValueError(
                    f"No weights for layer {unit.layer!r} (PyTorch {unit.source!r}) "
                    "in the checkpoint. A checkpoint without its classifier can "
                    "only be loaded with include_top=False."
                )
            value = arrays[key]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Layer {unit.layer!r} expects shape {tuple(variable.shape)} "
                    f"for weight {index} but PyTorch {unit.source!r} gives "
                    f"{tuple(value.shape)}. The checkpoint is for another variant "
                    "or number of classes."
                )
            values.append(value)
        plan.append((layer, values))
    for layer, values in plan:  # nothing is changed until everything fits
        layer.set_weights(values)


def load_pretrained(
    model: keras.Model,
    units: list[Unit],
    weights,
    *,
    tag: str,
    imagenet: Callable[[], tuple[str, str | None]] | None,
) -> None:
    """Loads `weights` into a network from `build_network`.

    Args:
        weights: None (keep the random initialisation), `"imagenet"` (the
            checkpoint `imagenet()` locates, with its sha256), the path of a
            PyTorch checkpoint (converted once, then cached, see
            `converted_weights`), or of a Keras `.h5` weights file.
        tag: str. Names the architecture in the conversion cache.
    """
    if weights is None:
        return
    sha256 = None
    if isinstance(weights, str) and weights == "imagenet":
        if imagenet is None:
            raise ValueError(
                f"{model.name} has no ImageNet weights. Received: "
                "weights='imagenet'; pass None or a file path."
            )
        path, sha256 = imagenet()
    else:
        path = local_weights_path(
            weights,
            "Pass 'imagenet', None, or the path of a PyTorch checkpoint or a Keras "
            "'.weights.h5' file of this network.",
        )
    if path.endswith(".h5"):
        load_keras_weights(
            model,
            path,
            "It must be saved from the same network, built with the same include_top.",
        )
        return
    arrays = converted_weights(
        path,
        tag,
        lambda state_dict: convert_state_dict(units, state_dict),
        expected_sha256=sha256,
    )
    assign_weights(model, units, arrays)
