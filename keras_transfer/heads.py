"""New layers on top of a backbone: pooling, hidden Dense layers, the output layer."""

from __future__ import annotations

import keras

POOLING_CHOICES = ("avg", "max", "flatten", None)

# task -> (output activation, loss, metrics)
TASKS = {
    "multiclass": ("softmax", "sparse_categorical_crossentropy", ["accuracy"]),
    "binary": ("sigmoid", "binary_crossentropy", ["binary_accuracy"]),
    "multilabel": ("sigmoid", "binary_crossentropy", ["binary_accuracy"]),
    "regression": ("linear", "mean_squared_error", ["mean_absolute_error"]),
}


def validate_head(
    *, num_classes, task, pooling, hidden_units, dropout
) -> tuple[int, ...]:
    """Checks head arguments before anything is built; returns hidden units."""
    if task not in TASKS:
        raise ValueError(
            f"Expected `task` to be one of {sorted(TASKS)}. Received: task={task!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(
            "Expected `num_classes` to be a positive int. "
            f"Received: num_classes={num_classes!r} of type "
            f"{type(num_classes).__name__}"
        )
    minimum = 2 if task == "multiclass" else 1
    if num_classes < minimum:
        hint = (
            " For two classes with one sigmoid output use task='binary' and "
            "num_classes=1."
            if task == "multiclass" and num_classes == 1
            else ""
        )
        raise ValueError(
            f"Expected `num_classes` >= {minimum} for task={task!r}. "
            f"Received: num_classes={num_classes}.{hint}"
        )
    if task == "binary" and num_classes != 1:
        raise ValueError(
            "task='binary' has one sigmoid output; use num_classes=1 (or "
            "task='multiclass' for a softmax over classes). "
            f"Received: num_classes={num_classes}"
        )
    if pooling not in POOLING_CHOICES:
        raise ValueError(
            f"Expected `pooling` to be 'avg', 'max', 'flatten' or None. "
            f"Received: pooling={pooling!r}"
        )
    if isinstance(hidden_units, (int, dict)):
        hidden_units = (hidden_units,)
    hidden_units = tuple(_validate_hidden(spec) for spec in hidden_units or ())
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"Expected `dropout` in [0, 1). Received: dropout={dropout!r}")
    return hidden_units


_HIDDEN_KEYS = ("units", "activation", "dropout", "batchnorm")


def _validate_hidden(spec):
    """An int (units) or a dict of `_HIDDEN_KEYS`; returns it checked."""
    units = spec.get("units") if isinstance(spec, dict) else spec
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(
            "Expected each entry of `hidden_units` to be a positive int or a dict "
            "with positive int 'units' (and optional 'activation', 'dropout', "
            f"'batchnorm'). Received: {spec!r}"
        )
    if not isinstance(spec, dict):
        return spec
    unknown = sorted(set(spec) - set(_HIDDEN_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown keys {unknown} in hidden layer {spec!r}; expected some of "
            f"{list(_HIDDEN_KEYS)}."
        )
    dropout = spec.get("dropout")
    if dropout is not None and (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float))
        or not 0 <= dropout < 1
    ):
        raise ValueError(f"Expected 'dropout' in [0, 1) or None. Received: {spec!r}")
    if not isinstance(spec.get("batchnorm", False), bool):
        raise ValueError(f"Expected 'batchnorm' to be a bool. Received: {spec!r}")
    activation = spec.get("activation")
    if activation is not None:
        try:
            keras.activations.get(activation)
        except ValueError as error:
            raise ValueError(
                f"Expected 'activation' to name a Keras activation. Received: {spec!r}"
            ) from error
    return dict(spec)


def _seed(seed, offset):
    return None if seed is None else seed + offset


def build_head(
    features,
    *,
    num_classes: int,
    task: str = "multiclass",
    pooling: str | None = "avg",
    hidden_units: tuple[int, ...] = (),
    hidden_activation: str = "relu",
    dropout: float = 0.2,
    seed: int | None = None,
):
    """Applies pooling, hidden Dense layers and a new output layer to `features`.

    Every new layer is freshly initialised (Glorot uniform kernels, zero
    biases), reproducibly when `seed` is given.

    Args:
        features: symbolic tensor. Backbone output, rank 2 or 4.
        num_classes: int. Output units.
        task: str. `"multiclass"` (softmax), `"binary"`/`"multilabel"`
            (sigmoid) or `"regression"` (linear).
        pooling: str or None. How rank-4 features become a vector: `"avg"`,
            `"max"`, `"flatten"`. Ignored for rank-2 features.
        hidden_units: tuple. A Dense layer (with dropout) per entry: its units
            (int), or a dict with `units` and optional `activation`,
            `dropout` and `batchnorm` (a BatchNormalization between the Dense
            layer and its activation) overriding the defaults below.
        hidden_activation: str. Default activation of the hidden layers.
        dropout: float. Default dropout rate before each Dense layer of the head.
        seed: int or None. Seeds initialisers and dropout.

    Returns:
        The output tensor.
    """
    x = features
    if len(x.shape) == 4:
        if pooling is None:
            raise ValueError(
                f"The backbone's features are spatial (shape {tuple(x.shape)}); "
                "choose pooling='avg', 'max' or 'flatten'. Received: pooling=None"
            )
        x = {
            "avg": keras.layers.GlobalAveragePooling2D(name="head_pool"),
            "max": keras.layers.GlobalMaxPooling2D(name="head_pool"),
            "flatten": keras.layers.Flatten(name="head_pool"),
        }[pooling](x)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name="head_pool")(x)
    for i, spec in enumerate(hidden_units, start=1):
        spec = spec if isinstance(spec, dict) else {"units": spec}
        rate = spec.get("dropout")
        rate = dropout if rate is None else rate
        activation = spec.get("activation") or hidden_activation
        batchnorm = spec.get("batchnorm", False)
        if rate:
            x = keras.layers.Dropout(
                rate, seed=_seed(seed, 100 + i), name=f"head_dropout_{i}"
            )(x)
        x = keras.layers.Dense(
            spec["units"],
            activation=None if batchnorm else activation,
            use_bias=not batchnorm,
            kernel_initializer=keras.initializers.GlorotUniform(seed=_seed(seed, i)),
            name=f"head_dense_{i}",
        )(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"head_batchnorm_{i}")(x)
            x = keras.layers.Activation(activation, name=f"head_activation_{i}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, seed=_seed(seed, 100), name="head_dropout")(x)
    activation = TASKS[task][0]
    return keras.layers.Dense(
        num_classes,
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed=_seed(seed, 0)),
        name="predictions",
    )(x)
