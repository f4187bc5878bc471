"""`TransferModel`: a pretrained backbone with a new head, as a `keras.Model`."""

from __future__ import annotations

import logging

import keras

from keras_transfer.backbones.backbone import BATCHNORM_POLICIES
from keras_transfer.backbones.preprocessing import PREPROCESSING_MODES
from keras_transfer.backbones.registry import resolve
from keras_transfer.callbacks import GradualUnfreeze
from keras_transfer.freezing import (
    StrategyDecision,
    layer_groups,
    set_trainable,
    set_trainable_groups,
    train_groups,
    weighted_layer_paths,
)
from keras_transfer.heads import TASKS, build_head, validate_head
from keras_transfer.optimizers import GroupedOptimizer, group_multipliers

logger = logging.getLogger("keras_transfer")

HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4
DEFAULT_LAYER_DECAY = 0.75


def _validate_input_shape(input_shape):
    if input_shape is None:
        return None
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or min(shape) < 1
    ):
        raise ValueError(
            "Expected `input_shape` to be (height, width, channels) with positive "
            f"ints, e.g. (224, 224, 3) or (128, 128, 1). Received: "
            f"input_shape={input_shape!r}"
        )
    return shape


@keras.saving.register_keras_serializable(package="keras_transfer")
class TransferModel(keras.Model):
    """A pretrained backbone, its top popped, with a new head: a `keras.Model`.

    Built functionally: raw images in `[0, 255]` -> (grayscale to RGB) ->
    (resizing) -> `Backbone` (its preprocessing, then the pretrained network
    without its classifier) -> pooling -> hidden Dense layers -> a new, randomly
    initialised output layer. The backbone starts frozen, so a first `fit`
    trains the head only; `unfreeze()` opens it for fine-tuning.

    BatchNorm layers of the backbone stay in inference mode (pretrained moving
    statistics, never updated) unless `batchnorm="trainable"`: see `Backbone`.

    `freeze_backbone()` and `unfreeze()` recompile a compiled model with the
    arguments of its last `compile()` (a fresh optimizer), because Keras builds
    its train step and optimizer for one set of trainable weights.

    Args:
        backbone: str, keras.Model or Backbone. A registered name (see
            `keras_transfer.list_backbones()`), a `.keras`/`.h5` file, or a model
            you already have, with or without its classifier (it is cut off).
            Defaults to `"efficientnet_lite0"`, whose ImageNet weights ship with
            the package and load offline.
        num_classes: int. Output units: classes, or targets for regression.
            Required.
        input_shape: tuple or None. `(height, width, channels)` of the images
            you feed; channels 1 (grayscale, repeated to RGB inside the model) or
            3. Defaults to the backbone's native size. Stored as `image_shape`.
        weights: str or None. `"imagenet"`, None, or a local weights file; for
            named backbones only. Stored as `backbone_weights`.
        task: str. `"multiclass"` (softmax), `"binary"` (one sigmoid unit),
            `"multilabel"` (sigmoid per class) or `"regression"` (linear).
        pooling: str or None. `"avg"`, `"max"` or `"flatten"` for spatial
            features; unused when the backbone output is already a vector.
        hidden_units: tuple of int. Hidden Dense layers of the head.
        hidden_activation: str. Their activation.
        dropout: float. Dropout before each Dense layer of the head.
        resize: bool. Resize inputs to the backbone's native size inside the
            model (for named backbones) or to a model backbone's input size.
        preprocessing: str or None. Override the backbone's input normalisation
            (`"caffe"`, `"tf"`, `"torch"`, `"efficientnet_lite"`, `"hub"`,
            `"none"`); None uses the registry's, `"hub"` for TF-Hub models, or
            `"none"` for your own model.
        batchnorm: str. `"frozen"` (default) or `"trainable"`.
        cut_at: str, int or None. Where to cut a model backbone (see
            `keras_transfer.backbones.pop_top`).
        output_key: str or None. For TF-Hub backbones whose model returns a
            dict, the output to use as features.
        seed: int or None. Seeds the head's initialisers and dropout.

    Example:

    >>> model = TransferModel("mobilenet_v3_small", num_classes=3,
    ...                       input_shape=(32, 32, 3), weights=None)
    >>> model.compile()
    >>> model.fit(np.zeros((4, 32, 32, 3)), np.array([0, 1, 2, 0]), verbose=0)
    >>> model.unfreeze(top_groups=1)
    """

    def __init__(
        self,
        backbone="efficientnet_lite0",
        num_classes=None,
        *,
        input_shape=None,
        weights="imagenet",
        task="multiclass",
        pooling="avg",
        hidden_units=(),
        hidden_activation="relu",
        dropout=0.2,
        resize=False,
        preprocessing=None,
        batchnorm="frozen",
        cut_at=None,
        output_key=None,
        seed=None,
        **kwargs,
    ):
        hidden = validate_head(
            num_classes=num_classes,
            task=task,
            pooling=pooling,
            hidden_units=hidden_units,
            dropout=dropout,
        )
        image_shape = _validate_input_shape(input_shape)
        if batchnorm not in BATCHNORM_POLICIES:
            raise ValueError(
                f"Expected `batchnorm` to be one of {BATCHNORM_POLICIES}. "
                f"Received: batchnorm={batchnorm!r}"
            )
        if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
            raise ValueError(
                f"Expected `preprocessing` to be one of {PREPROCESSING_MODES} or "
                f"None. Received: preprocessing={preprocessing!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(
                f"Expected `seed` to be an int or None. Received: seed={seed!r}"
            )
        try:
            keras.activations.get(hidden_activation)
        except ValueError as error:
            raise ValueError(
                "Expected `hidden_activation` to name a Keras activation. "
                f"Received: hidden_activation={hidden_activation!r}"
            ) from error

        # === Layers ===
        backbone_input = None
        if isinstance(backbone, str) and image_shape is not None and not resize:
            backbone_input = (image_shape[0], image_shape[1], 3)
        backbone_layer = resolve(
            backbone,
            weights=weights,
            input_shape=backbone_input,
            cut_at=cut_at,
            preprocessing=preprocessing,
            output_key=output_key,
            batchnorm=batchnorm,
        )
        model_shape = tuple(backbone_layer.model.inputs[0].shape[1:])
        if image_shape is None:
            if None in model_shape:
                raise ValueError(
                    f"The backbone accepts any image size {model_shape}; pass "
                    "`input_shape=(height, width, channels)`."
                )
            image_shape = model_shape
        channels = model_shape[-1]
        if image_shape[-1] != channels and not (image_shape[-1] == 1 and channels == 3):
            raise ValueError(
                f"The backbone takes {channels}-channel images; `input_shape` must "
                f"have {channels} channels"
                + (" or 1 (grayscale, repeated to RGB)" if channels == 3 else "")
                + f". Received: input_shape={image_shape}"
            )
        if resize and None in model_shape[:2]:
            size = backbone_layer.native_size
            if size is None:
                raise ValueError(
                    "resize=True needs a target size, but the backbone accepts any "
                    "size and has no native size; pass resize=False."
                )
            target = (size, size)
        else:
            target = model_shape[:2]
        if not resize and None not in target and tuple(image_shape[:2]) != target:
            raise ValueError(
                f"The backbone takes {target[0]}x{target[1]} images but "
                f"input_shape={image_shape}; pass resize=True to resize inside the "
                "model, or a matching input_shape."
            )
        backbone_layer.batchnorm = batchnorm
        self.backbone = backbone_layer

        # === Functional Model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = inputs
        if image_shape[-1] == 1 and channels == 3:
            x = keras.layers.Concatenate(name="grayscale_to_rgb")([x, x, x])
        if resize and tuple(image_shape[:2]) != tuple(target):
            x = keras.layers.Resizing(*target, name="resize")(x)
        features = self.backbone(x)
        outputs = build_head(
            features,
            num_classes=num_classes,
            task=task,
            pooling=pooling,
            hidden_units=hidden,
            hidden_activation=hidden_activation,
            dropout=dropout,
            seed=seed,
        )
        kwargs.setdefault("name", "transfer_model")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.backbone_weights = weights if weights is None else str(weights)
        self.task = task
        self.pooling = pooling
        self.hidden_units = hidden
        self.hidden_activation = hidden_activation
        self.dropout = dropout
        self.resize = resize
        self.preprocessing = preprocessing
        self.batchnorm = batchnorm
        self.cut_at = cut_at
        self.output_key = output_key
        self.seed = seed
        self._compile_request = None
        self._layer_groups = None
        set_trainable(self.backbone, False)

    # --- Freezing -------------------------------------------------------------

    @property
    def layer_groups(self):
        """The backbone's layer groups, bottom to top (see `layer_groups`)."""
        if self._layer_groups is None:
            self._layer_groups = layer_groups(
                self.backbone.model, self.backbone.block_pattern
            )
        return self._layer_groups

    def freeze_backbone(self) -> None:
        """Freezes every backbone weight: only the head trains."""
        self.set_trainable_groups(())

    def unfreeze(self, top_groups: int | None = None) -> None:
        """Makes the backbone trainable: all of it, or its top `top_groups` groups.

        Args:
            top_groups: int or None. None unfreezes everything; n unfreezes the
                top n of `layer_groups` and freezes the rest; 0 freezes all.
        """
        groups = self.layer_groups
        set_trainable_groups(
            self.backbone, groups, len(groups) if top_groups is None else top_groups
        )
        self._trainable_changed()

    def set_trainable_groups(self, groups, head: bool = True) -> None:
        """Trains exactly the given backbone groups (and the head, or not).

        Args:
            groups: iterable of int or str. Indices into `layer_groups` (bottom
                to top, negative from the top) or group names.
            head: bool. Whether the new layers on top train.
        """
        train_groups(self.backbone, self.layer_groups, groups)
        for layer in self._head_layers():
            set_trainable(layer, head)
        self._trainable_changed()

    def _head_layers(self) -> list:
        return [layer for layer in self.layers if layer is not self.backbone]

    def apply_strategy(self, decision: StrategyDecision | str) -> None:
        """Freezes or unfreezes the backbone as `choose_strategy` decided."""
        strategy = getattr(decision, "strategy", decision)
        if strategy == "head_only":
            self.freeze_backbone()
        elif strategy == "fine_tune":
            self.unfreeze()
        else:
            raise ValueError(
                "Expected a StrategyDecision or 'head_only' / 'fine_tune'. "
                f"Received: {decision!r}"
            )
        logger.info("Applied strategy %s", decision)

    def _backbone_is_trainable(self) -> bool:
        return bool(self.backbone.trainable_weights)

    def _trainable_changed(self) -> None:
        if not self.compiled or self._compile_request is None:
            return
        if isinstance(self.optimizer, GroupedOptimizer):
            # Built for every weight: keep its state, retrace the train step.
            rate = self._auto_learning_rate()
            if rate is not None:
                self.optimizer.learning_rate = rate
            self.make_train_function(force=True)
            logger.info("Trainable layers changed; optimizer state kept")
        else:
            self.compile(**self._compile_request)
            logger.info("Recompiled after a change of trainable layers")

    # --- Training -------------------------------------------------------------

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        metrics="auto",
        *,
        learning_rate: float | None = None,
        layer_decay: float | None = None,
        lr_multipliers=None,
        l2_sp: float | None = None,
        **kwargs,
    ):
        """Like `keras.Model.compile`, with defaults that fit the head.

        Args:
            optimizer: `"auto"` (Adam), an optimizer name or instance.
            loss: `"auto"` picks the loss of `task`: sparse categorical
                crossentropy (integer labels; pass `"categorical_crossentropy"`
                for one-hot labels), binary crossentropy, or mean squared error.
            metrics: `"auto"` picks accuracy (or mean absolute error).
            learning_rate: float or None. For `"auto"` or named optimizers;
                None uses 1e-3 while the backbone is frozen and 1e-4 once any
                backbone weight trains.
            layer_decay: float or None. Discriminative learning rates: each
                layer group learns `layer_decay` times as fast as the one above
                it, the head at the full rate (e.g. 0.75, or ULMFiT's 1 / 2.6).
            lr_multipliers: sequence of float or None. Instead, one multiplier
                per layer group, bottom to top.
            l2_sp: float or None. L2-SP: pull backbone weights towards their
                values at this compile (the pretrained ones) with the gradient
                of `l2_sp / 2 * ||w - w0||^2`; the head is not pulled.
            **kwargs: passed to `keras.Model.compile`.

        With any of the last three, the optimizer is a `GroupedOptimizer`: one
        optimizer per layer group, built for every weight, so that freezing and
        unfreezing (also during `fit`) keep its state instead of recompiling.
        """
        request = dict(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            learning_rate=learning_rate,
            **kwargs,
        )
        grouped = {
            "layer_decay": layer_decay,
            "lr_multipliers": lr_multipliers,
            "l2_sp": l2_sp,
        }
        grouped = {key: value for key, value in grouped.items() if value is not None}
        request.update(grouped)
        groups = len(self.layer_groups)
        multipliers = group_multipliers(groups, layer_decay, lr_multipliers)
        if isinstance(optimizer, str):
            rate = learning_rate
            if rate is None:
                rate = self._auto_learning_rate(optimizer, learning_rate)
            name = "adam" if optimizer == "auto" else optimizer
            optimizer = keras.optimizers.get(
                {"class_name": name, "config": {"learning_rate": rate}}
            )
        elif learning_rate is not None:
            raise ValueError(
                "`learning_rate` applies to 'auto' or named optimizers; set it on "
                f"the optimizer instead. Received: optimizer={optimizer!r}, "
                f"learning_rate={learning_rate}"
            )
        elif getattr(optimizer, "built", False):
            # An optimizer already built for other variables cannot be reused.
            optimizer = optimizer.__class__.from_config(optimizer.get_config())
        if grouped:
            optimizer = GroupedOptimizer(
                optimizer, multipliers, l2_sp=l2_sp, anchored_groups=range(groups)
            )
        previous = self.optimizer if self.compiled else None
        default_loss, default_metrics = TASKS[self.task][1:]
        super().compile(
            optimizer=optimizer,
            loss=default_loss if loss == "auto" else loss,
            metrics=list(default_metrics) if metrics == "auto" else metrics,
            **kwargs,
        )
        self._compile_request = request
        if grouped:
            self.optimizer.build(*self._variable_groups())
            if isinstance(previous, GroupedOptimizer):
                self.optimizer.keep_anchors_of(previous)

    def _auto_learning_rate(self, optimizer=None, learning_rate=None):
        """The "auto" rate for the current trainable state, or None if not auto."""
        request = self._compile_request or {}
        optimizer = optimizer or request.get("optimizer")
        if learning_rate is None:
            learning_rate = request.get("learning_rate")
        if not isinstance(optimizer, str) or learning_rate is not None:
            return None
        if self._backbone_is_trainable():
            return FINE_TUNE_LEARNING_RATE
        return HEAD_LEARNING_RATE

    def _variable_groups(self):
        """Every weight that can train, and its group: backbone groups, then head."""
        head = len(self.layer_groups)
        group_of = {}
        for index, group in enumerate(self.layer_groups):
            for layer in group.layers:
                for variable in layer._trainable_variables:
                    group_of[id(variable)] = index
        in_backbone = {id(v) for v in self.backbone.weights}
        variables, group_ids = [], []
        for layer in self._flatten_layers(include_self=True):
            for variable in layer._trainable_variables:
                if id(variable) not in in_backbone:
                    group_ids.append(head)
                else:  # a backbone weight outside every group joins the lowest
                    group_ids.append(group_of.get(id(variable), 0))
                variables.append(variable)
        return variables, group_ids

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        # Callbacks that change trainable layers during fit first set up the
        # optimizer for that (see GradualUnfreeze), before any of them runs.
        for callback in callbacks or ():
            prepare = getattr(callback, "prepare_model", None)
            if prepare is not None:
                prepare(self)
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def fine_tune(
        self,
        x=None,
        y=None,
        *,
        epochs: int = 5,
        freeze_epochs: int = 1,
        layer_decay: float | None = DEFAULT_LAYER_DECAY,
        l2_sp: float | None = None,
        callbacks=None,
        **kwargs,
    ) -> keras.callbacks.History:
        """Head first, then everything at lower, discriminative rates: one call.

        fastai's `fine_tune` and LP-FT (Kumar et al., 2022): `freeze_epochs`
        epochs train the new head on the frozen backbone (so its random weights
        do not send large gradients into the pretrained ones), then every layer
        trains for `epochs` more. One `fit`, so one History, and callbacks such
        as EarlyStopping, ModelCheckpoint and BackupAndRestore work as usual.

        The model keeps its compile arguments (or gets `compile()`'s defaults)
        with `layer_decay` and `l2_sp` added. With the "auto" learning rate the
        head phase runs at 1e-3 and the rest at 1e-4 for the head, each group
        below at `layer_decay` times the rate of the one above.

        Args:
            x, y: the training data, as for `fit`.
            epochs: int. Epochs with every layer training.
            freeze_epochs: int. Epochs of the head alone first (0 skips them).
            layer_decay: float or None. See `compile`; None for one rate.
            l2_sp: float or None. See `compile`.
            callbacks: list of callbacks, as for `fit`.
            **kwargs: passed to `fit` (`validation_data`, `batch_size`, ...).

        Returns:
            The `History` of both phases, epochs numbered on.
        """
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(
                f"Expected `epochs` to be a positive int. Received: epochs={epochs!r}"
            )
        if (
            not isinstance(freeze_epochs, int)
            or isinstance(freeze_epochs, bool)
            or freeze_epochs < 0
        ):
            raise ValueError(
                "Expected `freeze_epochs` to be an int >= 0. Received: "
                f"freeze_epochs={freeze_epochs!r}"
            )
        request = dict(self._compile_request or {}) if self.compiled else {}
        for key in ("layer_decay", "lr_multipliers", "l2_sp"):
            request.pop(key, None)
        self.compile(**request, layer_decay=layer_decay or 1.0, l2_sp=l2_sp)
        schedule = GradualUnfreeze(
            at_epochs=[freeze_epochs], groups_per_step=len(self.layer_groups)
        )
        return self.fit(
            x,
            y,
            epochs=freeze_epochs + epochs,
            callbacks=[schedule, *(callbacks or [])],
            **kwargs,
        )

    def use_grouped_optimizer(self) -> None:
        """Recompiles with a `GroupedOptimizer` unless the model already has one."""
        if not self.compiled or self._compile_request is None:
            raise ValueError(
                "Compile the model before changing trainable layers during fit: "
                "call `model.compile()` first."
            )
        if not isinstance(self.optimizer, GroupedOptimizer):
            self.compile(**self._compile_request, layer_decay=1.0)
            logger.info("Recompiled with one optimizer per layer group")

    def get_compile_config(self):
        if not self.compiled or self._compile_request is None:
            return {}
        # The request, not its result: "auto" choices are made again after loading.
        return {"request": keras.saving.serialize_keras_object(self._compile_request)}

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config.get("request", config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # --- Config ---------------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "weights": self.backbone_weights,
            "task": self.task,
            "pooling": self.pooling,
            "hidden_units": list(self.hidden_units),
            "hidden_activation": self.hidden_activation,
            "dropout": self.dropout,
            "resize": self.resize,
            "preprocessing": self.preprocessing,
            "batchnorm": self.batchnorm,
            "cut_at": self.cut_at,
            "output_key": self.output_key,
            "seed": self.seed,
            "frozen_layers": [
                path
                for path, layer in weighted_layer_paths(self)
                if not layer.trainable
            ],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        frozen = set(config.pop("frozen_layers", []))
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["input_shape"] = tuple(config["input_shape"])
        model = cls(**config)
        set_trainable(model.backbone, True)
        for path, layer in weighted_layer_paths(model):
            set_trainable(layer, path not in frozen)
        if not model.backbone.trainable_weights:
            set_trainable(model.backbone, False)
        return model
