"""A wider output layer (old classes kept, new ones added) and extra hidden layers.

Both return a new model and leave the given one as it was, so the original can
still serve, or teach the new one its old classes (Learning without
Forgetting, `fit(..., lwf=True)`).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_transfer.backbones.surgery import _producer, find_output_layer


def new_class_names(new_classes, taken: list[str]) -> list[str]:
    """Names of the classes to add: given ones, or `class_<i>` for a count."""
    if isinstance(new_classes, bool) or not isinstance(new_classes, (int, list, tuple)):
        raise TypeError(
            "Expected `new_classes` to be a positive int (how many classes to add) "
            "or a list of new class names. Received: "
            f"new_classes={new_classes!r} of type {type(new_classes).__name__}"
        )
    if isinstance(new_classes, int):
        if new_classes < 1:
            raise ValueError(
                "Expected `new_classes` to be a positive int or a non-empty list "
                f"of names. Received: new_classes={new_classes}"
            )
        names, index = [], len(taken)
        while len(names) < new_classes:  # class_<i>, skipping names in use
            if f"class_{index}" not in taken:
                names.append(f"class_{index}")
            index += 1
        return names
    names = list(new_classes)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            "Expected `new_classes` to be a non-empty list of non-empty strings. "
            f"Received: new_classes={new_classes!r}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1 or n in taken})
    if repeated:
        raise ValueError(
            f"Class names must be unique; {repeated} would appear twice. "
            f"Received: new_classes={new_classes!r}"
        )
    return names


def _widen_columns(old_weights, fresh_weights):
    """Old output units' weights in the first columns, fresh ones after."""
    widened = []
    for old, fresh in zip(old_weights, fresh_weights, strict=True):
        fresh = np.array(fresh)
        fresh[..., : old.shape[-1]] = old
        widened.append(fresh)
    return widened


def copy_weights(source: keras.Model, target: keras.Model, skip=()) -> None:
    """Copies weights of layers with the same name; `skip` and new ones are left."""
    names = {layer.name for layer in source.layers}
    for layer in target.layers:
        if layer.name in names and layer.name not in skip and layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def widen_output(model: keras.Model, new_classes, *, seed: int | None = None):
    """Returns a copy of `model` whose output layer has more units.

    The old units keep their exact weights and biases, so the old logits are
    unchanged at first; the new units are freshly initialised by the layer's
    own initialiser. The given model is not changed.

    Args:
        model: keras.Model. A `TransferModel` (see `TransferModel.widen`, which
            also records the class names), or any Functional or Sequential
            classifier whose output comes from a Dense or 1x1 convolution
            layer through weight-free layers (softmax, flatten, reshape):
            every Keras Applications classifier, for example.
        new_classes: int or list of str. How many classes to add, or their
            names.
        seed: int or None. For a `TransferModel`: seeds the new units.

    Returns:
        The widened model, of the same kind, uncompiled unless a
        `TransferModel` was compiled (then compiled with the same arguments).

    Example:

    >>> base = keras.applications.MobileNetV3Small(weights=None)
    >>> wide = widen_output(base, 3)
    >>> wide.output_shape
    (None, 1003)
    """
    if hasattr(model, "widen"):
        return model.widen(new_classes, seed=seed)
    top = find_output_layer(model)
    old = top.weights[0].shape[-1]
    count = len(new_class_names(new_classes, []))
    # Layers between the output layer and the model output (softmax, flatten,
    # a Reshape to (classes,)) follow the new width.
    after_top = set()
    tensor = model.outputs[0]
    layer, node = _producer(tensor)
    while layer is not top:
        after_top.add(id(layer))
        layer, node = _producer(node.input_tensors[0])

    def clone_layer(layer):
        config = layer.get_config()
        if layer is top:
            key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
            config[key] = old + count
        elif id(layer) in after_top and isinstance(layer, keras.layers.Reshape):
            shape = list(config["target_shape"])
            if shape and shape[-1] == old:
                config["target_shape"] = tuple(shape[:-1] + [old + count])
        return layer.__class__.from_config(config)

    wide = keras.models.clone_model(model, clone_function=clone_layer)
    for source, target in zip(model.layers, wide.layers, strict=True):
        if source is top:
            target.set_weights(
                _widen_columns(source.get_weights(), target.get_weights())
            )
        elif source.weights:
            target.set_weights(source.get_weights())
    return wide


def widened_transfer_model(model, new_classes, seed=None):
    """`TransferModel.widen`: a new TransferModel with more output units."""
    if model.task not in ("multiclass", "multilabel"):
        raise ValueError(
            "Only classifiers with one output unit per class can be widened "
            f"(task 'multiclass' or 'multilabel'). Received: task={model.task!r}"
        )
    old_names = model.class_names
    names = new_class_names(new_classes, old_names)
    config = model.get_config()
    config.update(
        num_classes=model.num_classes + len(names),
        class_names=old_names + names,
        old_classes=model.num_classes,
    )
    if seed is not None:
        config["seed"] = seed
    wide = model.__class__.from_config(config)
    copy_weights(model, wide, skip={"predictions"})
    output = wide.get_layer("predictions")
    output.set_weights(
        _widen_columns(
            model.get_layer("predictions").get_weights(), output.get_weights()
        )
    )
    _compile_like(model, wide)
    return wide


def with_hidden_layers(model, units, activation, dropout, batchnorm, seed):
    """`TransferModel.add_hidden_layers`: new hidden layers, then a new output."""
    if isinstance(units, int):
        units = (units,)
    specs = []
    for value in units:
        spec = {"units": value, "batchnorm": batchnorm}
        if activation is not None:
            spec["activation"] = activation
        if dropout is not None:
            spec["dropout"] = dropout
        specs.append(spec)
    if not specs:
        raise ValueError(
            "Expected `units` to be a positive int or a non-empty sequence of "
            f"them. Received: units={units!r}"
        )
    config = model.get_config()
    config["hidden_units"] = list(config["hidden_units"]) + specs
    config["class_names"] = model.class_names
    # The output layer is new: none of its outputs is an "old" one to keep.
    config["old_classes"] = None
    if seed is not None:
        config["seed"] = seed
    deeper = model.__class__.from_config(config)
    copy_weights(model, deeper, skip={"predictions"})
    _compile_like(model, deeper)
    return deeper


def _compile_like(source, target) -> None:
    request = getattr(source, "_compile_request", None)
    if source.compiled and request is not None:
        request = dict(request)
        optimizer = request.get("optimizer")
        if isinstance(optimizer, keras.optimizers.Optimizer):
            # Its own copy: an optimizer is built for one model's variables.
            request["optimizer"] = optimizer.from_config(optimizer.get_config())
        target.compile(**request)
