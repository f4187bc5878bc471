"""Popping the top off a Keras model: find the feature layer and cut there.

The output layer of a classifier is found structurally, never by layer name
(auto-generated names change between builds): walk back from the model output
through layers without weights (activation, softmax, flatten, reshape, dropout)
to the first layer that has weights. If that layer is a `Dense` or a 1x1
convolution, it is the output layer; the tensor feeding it (before any dropout
of the old top) is the feature tensor. This covers every Keras Applications
top, MobileNetV3's convolutional one included.
"""

from __future__ import annotations

import difflib

import keras

_DROPOUT_TYPES = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
)
_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _producer(tensor):
    """Returns (layer, node) that produced a symbolic tensor."""
    history = tensor._keras_history
    layer = history.operation
    return layer, layer._inbound_nodes[history.node_index]


def _require_graph(model: keras.Model) -> None:
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ValueError(
            f"Cannot cut model {model.name!r} ({type(model).__name__}): it has no "
            "symbolic graph. Pass a Functional or Sequential model that has been "
            "built with an `Input` (e.g. `keras.Sequential([keras.Input(shape), "
            "...])`), or a model that is already a feature extractor with "
            "`cut_at=-1`."
        )


def _is_output_layer(layer) -> bool:
    if isinstance(layer, keras.layers.Dense):
        return True
    if isinstance(layer, _CONV_TYPES):
        return all(k == 1 for k in layer.kernel_size)
    return False


def find_output_layer(model: keras.Model) -> keras.layers.Layer:
    """Returns the layer that produces a classifier's outputs (its "top").

    Args:
        model: keras.Model. A Functional or Sequential model with one output.

    Returns:
        The `Dense` or 1x1 convolution layer whose outputs reach the model
        output through weight-free layers only.

    Raises:
        ValueError: if the model has several outputs, no graph, or its last
            layer with weights is not a Dense or 1x1 convolution (for example a
            model that is already a feature extractor).
    """
    layer, _ = _find_output(model)
    return layer


def _find_output(model):
    _require_graph(model)
    if len(model.outputs) != 1:
        raise ValueError(
            f"Cannot find the output layer of model {model.name!r}: it has "
            f"{len(model.outputs)} outputs. Pass `cut_at=<layer name or index>` "
            "to choose the feature layer."
        )
    tensor = model.outputs[0]
    while True:
        layer, node = _producer(tensor)
        if layer.weights:
            break
        inputs = node.input_tensors
        if isinstance(layer, keras.layers.InputLayer) or len(inputs) != 1:
            raise ValueError(
                f"Cannot find the output layer of model {model.name!r}: walking "
                "back from the output reached "
                f"{layer.name!r} ({type(layer).__name__}) before any layer with "
                "weights. Pass `cut_at=<layer name or index>` to choose the "
                "feature layer, or `cut_at=-1` to use the model output as is."
            )
        tensor = inputs[0]
    if not _is_output_layer(layer):
        raise ValueError(
            f"Cannot find the output layer of model {model.name!r}: its last layer "
            f"with weights is {layer.name!r} ({type(layer).__name__}), not a Dense "
            "or 1x1 convolution classifier. If the model is already a feature "
            "extractor pass `cut_at=-1`; otherwise pass `cut_at=<layer name or "
            "index>` to choose the feature layer."
        )
    return layer, node


def _layer_by_cut_at(model, cut_at):
    layers = model.layers
    if isinstance(cut_at, bool) or not isinstance(cut_at, (int, str)):
        raise TypeError(
            "Expected `cut_at` to be a layer name (str) or index (int). "
            f"Received: cut_at={cut_at!r} of type {type(cut_at).__name__}"
        )
    if isinstance(cut_at, int):
        if not -len(layers) <= cut_at < len(layers):
            raise ValueError(
                f"`cut_at` index is out of range for model {model.name!r} with "
                f"{len(layers)} layers. Received: cut_at={cut_at}"
            )
        return layers[cut_at]
    names = [layer.name for layer in layers]
    if cut_at not in names:
        close = difflib.get_close_matches(cut_at, names, n=3)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Model {model.name!r} has no layer named {cut_at!r}.{hint} "
            f"Received: cut_at={cut_at!r}"
        )
    return layers[names.index(cut_at)]


def pop_top(model: keras.Model, cut_at: str | int | None = None) -> keras.Model:
    """Returns the model without its output layer: a feature extractor.

    The returned model shares layers (and weights) with `model`; clone first
    if the original must stay untouched.

    Args:
        model: keras.Model. A Functional or Sequential model.
        cut_at: str, int or None. The layer whose output becomes the features,
            by name or by index in `model.layers` (index 0 is the `InputLayer`
            of a Functional model but the first layer of a Sequential one);
            `-1` keeps the whole model, as is.
            None (default) finds the output layer automatically and cuts just
            before it, also dropping any dropout of the old top.

    Returns:
        A Functional `keras.Model` from the original inputs to the features.

    Example:

    >>> base = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                          keras.layers.GlobalAveragePooling2D(),
    ...                          keras.layers.Dense(10, activation="softmax")])
    >>> pop_top(base).output_shape
    (None, 4)
    """
    _require_graph(model)
    if cut_at is None:
        _, node = _find_output(model)
        features = node.input_tensors[0]
        layer, node = _producer(features)
        while isinstance(layer, _DROPOUT_TYPES):
            features = node.input_tensors[0]
            layer, node = _producer(features)
    elif cut_at == -1:
        if len(model.outputs) != 1:
            raise ValueError(
                f"cut_at=-1 keeps the model output, but model {model.name!r} has "
                f"{len(model.outputs)} outputs; name the feature layer instead."
            )
        return model
    else:
        layer = _layer_by_cut_at(model, cut_at)
        if layer is model.layers[-1] and len(model.outputs) == 1:
            features = model.outputs[0]
        else:
            nodes = [n for n in layer._inbound_nodes if n.output_tensors]
            if len(nodes) != 1:
                raise ValueError(
                    f"Layer {layer.name!r} is called {len(nodes)} times in model "
                    f"{model.name!r}; cut at a layer used once. "
                    f"Received: cut_at={cut_at!r}"
                )
            outputs = nodes[0].output_tensors
            if len(outputs) != 1:
                raise ValueError(
                    f"Layer {layer.name!r} has {len(outputs)} outputs; cut at a "
                    f"layer with one output. Received: cut_at={cut_at!r}"
                )
            features = outputs[0]
    return keras.Model(model.inputs, features, name=f"{model.name}_features")
