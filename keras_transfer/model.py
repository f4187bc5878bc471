"""`TransferModel`: a pretrained backbone with a new head, as a `keras.Model`."""

from __future__ import annotations

import logging

import keras
import numpy as np

from keras_transfer.backbones.backbone import BATCHNORM_POLICIES, Backbone
from keras_transfer.backbones.preprocessing import PREPROCESSING_MODES
from keras_transfer.backbones.registry import resolve, resolve_classifier
from keras_transfer.backbones.zoo.imagenet import imagenet_class_names
from keras_transfer.freezing import (
    StrategyDecision,
    layer_groups,
    set_trainable,
    set_trainable_groups,
    train_groups,
    weighted_layer_paths,
)
from keras_transfer.heads import build_head, validate_head
from keras_transfer.serving import export_for_serving
from keras_transfer.training import TrainingMixin
from keras_transfer.widening import (
    _widen_columns,
    new_class_names,
    widened_transfer_model,
    with_hidden_layers,
)

logger = logging.getLogger("keras_transfer")


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


def _validate_classes(num_classes, class_names, keep_top, extra_classes, hidden, task):
    """Checks the class arguments; returns (num_classes, class_names)."""
    if not isinstance(keep_top, bool):
        raise TypeError(
            f"Expected `keep_top` to be a bool. Received: keep_top={keep_top!r}"
        )
    if class_names is not None:
        if isinstance(class_names, str) or not all(
            isinstance(name, str) and name for name in class_names
        ):
            raise ValueError(
                "Expected `class_names` to be a list of non-empty strings. "
                f"Received: class_names={class_names!r}"
            )
        class_names = list(class_names)
        if len(set(class_names)) != len(class_names):
            raise ValueError(
                f"Expected unique `class_names`. Received: class_names={class_names!r}"
            )
    if keep_top:
        if task != "multiclass" or hidden:
            raise ValueError(
                "keep_top=True keeps the pretrained softmax classifier: it needs "
                "task='multiclass' and no hidden_units (add them later with "
                f"add_hidden_layers). Received: task={task!r}, hidden_units={hidden!r}"
            )
        new_class_names(extra_classes or 1, [])  # type and value checks
        return num_classes, class_names
    if extra_classes:
        raise ValueError(
            "`extra_classes` adds classes to a kept pretrained classifier: pass "
            "keep_top=True, or num_classes for a new head. Received: "
            f"extra_classes={extra_classes!r} with keep_top=False"
        )
    if class_names is not None:
        if num_classes is None:
            num_classes = len(class_names)
        elif num_classes != len(class_names):
            raise ValueError(
                f"Got {len(class_names)} class_names for num_classes={num_classes}; "
                "pass one name per output unit (or leave num_classes out)."
            )
    return num_classes, class_names


def _kept_classes(old, num_classes, class_names, extra_classes, imagenet):
    """(num_classes, class_names, old_classes) of a kept, widened classifier."""
    old_names = (
        imagenet_class_names()
        if imagenet and old == 1000
        else [f"class_{i}" for i in range(old)]
    )
    extra = new_class_names(extra_classes, old_names) if extra_classes else []
    total = old + len(extra)
    if num_classes is not None and num_classes != total:
        raise ValueError(
            f"keep_top=True keeps the {old} pretrained classes and adds "
            f"{len(extra)}: {total} outputs. Received: num_classes={num_classes}; "
            "leave it out or pass extra_classes."
        )
    if class_names is None:
        class_names = old_names + extra
    elif len(class_names) != total:
        raise ValueError(
            f"Got {len(class_names)} class_names for {total} outputs ({old} kept "
            f"+ {len(extra)} extra). Received: class_names of length {len(class_names)}"
        )
    return total, class_names, old if extra else None


@keras.saving.register_keras_serializable(package="keras_transfer")
class TransferModel(TrainingMixin, keras.Model):
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
    its train step and optimizer for one set of trainable weights; compiled
    with a `GroupedOptimizer` (`compile(layer_decay=...)`), they keep its
    state and retrace the train step instead. `fine_tune()` trains the head,
    then everything, in one call; `GradualUnfreeze` and `ChainThaw` change
    what trains during `fit`.

    Args:
        backbone: str, keras.Model or Backbone. A registered name (see
            `keras_transfer.list_backbones()`), a `.keras`/`.h5` file, or a model
            you already have, with or without its classifier (it is cut off).
            Defaults to `"efficientnet_lite0"`, whose ImageNet weights ship with
            the package and load offline.
        num_classes: int. Output units: classes, or targets for regression.
            Required, unless `class_names` or `keep_top=True` tell it.
        input_shape: tuple or None. `(height, width, channels)` of the images
            you feed; channels 1 (grayscale, repeated to RGB inside the model) or
            3. Defaults to the backbone's native size. Stored as `image_shape`.
        weights: str or None. `"imagenet"`, None, or a local weights file; for
            named backbones only. Stored as `backbone_weights`.
        task: str. `"multiclass"` (softmax), `"binary"` (one sigmoid unit),
            `"multilabel"` (sigmoid per class) or `"regression"` (linear).
        pooling: str or None. `"avg"`, `"max"` or `"flatten"` for spatial
            features; unused when the backbone output is already a vector.
        hidden_units: tuple. Hidden Dense layers of the head: units per layer,
            or dicts with `units` and optional `activation`, `dropout`,
            `batchnorm` (see `build_head`).
        hidden_activation: str. Their default activation.
        dropout: float. Default dropout before each Dense layer of the head.
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
        keep_top: bool. Keep the pretrained classifier (e.g. ImageNet's 1000
            classes) as the output layer instead of a new one, widened by
            `extra_classes`: the pretrained units keep their exact weights.
        extra_classes: int or list of str. With `keep_top=True`: new classes
            (a count, or their names) added after the pretrained ones.
        class_names: list of str or None. Names of the output units, in
            order; kept in the saved model (`class_names`, `predict_classes`).
            Defaults to ImageNet's names for a kept ImageNet top, else
            `class_<i>`.
        old_classes: int or None. How many leading output units existed before
            the last widening (set by `widen` and `keep_top`): the classes
            `fit(..., lwf=True)` keeps.

    Example:

    >>> model = TransferModel("mobilenet_v3_small", num_classes=3,
    ...                       input_shape=(32, 32, 3), weights=None)
    >>> model.compile()
    >>> model.fit(np.zeros((4, 32, 32, 3)), np.array([0, 1, 2, 0]), verbose=0)
    >>> model.unfreeze(top_groups=1)
    >>> history = model.fine_tune(np.zeros((4, 32, 32, 3)), np.array([0, 1, 2, 0]),
    ...                           epochs=1, verbose=0)
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
        keep_top=False,
        extra_classes=0,
        class_names=None,
        old_classes=None,
        **kwargs,
    ):
        num_classes, class_names = _validate_classes(
            num_classes, class_names, keep_top, extra_classes, hidden_units, task
        )
        hidden = validate_head(
            # A kept top's width is known once it is built.
            num_classes=2 if keep_top and num_classes is None else num_classes,
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
        if old_classes is not None and (
            isinstance(old_classes, bool)
            or not isinstance(old_classes, int)
            or not 1 <= old_classes < (num_classes or 2)
        ):
            raise ValueError(
                "Expected `old_classes` to be None or the number of leading output "
                f"units that existed before widening (1 to num_classes - 1). "
                f"Received: old_classes={old_classes!r}"
            )
        if keep_top and isinstance(backbone, Backbone):
            raise ValueError(
                "keep_top=True needs the classifier: pass a backbone name, model or "
                "file, not a Backbone layer."
            )
        top = None
        if keep_top:
            backbone_layer, *top = resolve_classifier(
                backbone,
                weights=weights,
                input_shape=backbone_input,
                cut_at=cut_at,
                preprocessing=preprocessing,
                batchnorm=batchnorm,
            )
            num_classes, class_names, old_classes = _kept_classes(
                top[0].shape[1],
                num_classes,
                class_names,
                extra_classes,
                imagenet=isinstance(backbone, str) and weights == "imagenet",
            )
        else:
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
        self._class_names = class_names
        self.old_classes = old_classes
        self._compile_request = None
        self._layer_groups = None
        set_trainable(self.backbone, False)
        if top:
            output = self.get_layer("predictions")
            output.set_weights(_widen_columns(top, output.get_weights()))

    # --- Classes --------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Names of the output units, old then new (`class_<i>` when unnamed)."""
        if self._class_names is not None:
            return list(self._class_names)
        return [f"class_{i}" for i in range(self.num_classes)]

    def predict_classes(self, x, top: int | None = None, **kwargs):
        """Predicts class names instead of probabilities.

        Args:
            x: images, as for `predict`.
            top: int or None. None returns the most probable class name per
                image (a numpy array of str); k returns, per image, a list of
                the k most probable `(class_name, probability)` pairs.
            **kwargs: passed to `predict` (`batch_size`, `verbose`, ...).
        """
        if self.task not in ("multiclass", "multilabel"):
            raise ValueError(
                "predict_classes applies to classifiers (task 'multiclass' or "
                f"'multilabel'). Received: task={self.task!r}; use predict."
            )
        if top is not None and (
            isinstance(top, bool) or not isinstance(top, int) or top < 1
        ):
            raise ValueError(
                f"Expected `top` to be a positive int or None. Received: top={top!r}"
            )
        probabilities = self.predict(x, **kwargs)
        names = np.array(self.class_names)
        if top is None:
            return names[probabilities.argmax(axis=-1)]
        order = np.argsort(-probabilities, axis=-1)[:, :top]
        return [
            [(str(names[i]), float(row[i])) for i in best]
            for row, best in zip(probabilities, order, strict=True)
        ]

    def widen(self, new_classes, *, seed: int | None = None) -> TransferModel:
        """A copy with more output units: old classes kept exactly, new ones added.

        The old units keep their weights and biases (the old logits are
        unchanged), the new units are freshly initialised, and every other
        layer keeps its weights and frozen state. This model is not changed,
        and the copy remembers how many classes it had (`old_classes`), so
        `fit(..., lwf=True)` can keep their outputs while the new ones are
        learnt (Learning without Forgetting). A compiled model's copy is
        compiled with the same arguments.

        Args:
            new_classes: int or list of str. How many classes to add, or their
                names (appended to `class_names`).
            seed: int or None. Seeds the new units (default: the model's seed).
        """
        return widened_transfer_model(self, new_classes, seed=seed)

    def add_hidden_layers(
        self,
        units,
        *,
        activation: str | None = None,
        dropout: float | None = None,
        batchnorm: bool = False,
        seed: int | None = None,
    ) -> TransferModel:
        """A copy with more hidden Dense layers before a new output layer.

        The backbone and the existing hidden layers keep their trained weights
        and frozen state; the new layers and the output layer (whose input
        changed) are freshly initialised; `class_names` stay, `old_classes` is
        reset (no output is kept, so there is nothing for LwF to keep). This
        model is not changed.

        Args:
            units: int or sequence of int. One Dense layer per entry.
            activation: str or None. Their activation (default: the model's
                `hidden_activation`).
            dropout: float or None. Dropout before each (default: `dropout`).
            batchnorm: bool. A BatchNormalization between each Dense layer and
                its activation.
            seed: int or None. Seeds the new layers (default: the model's seed).
        """
        return with_hidden_layers(self, units, activation, dropout, batchnorm, seed)

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

    def export_for_serving(self, base_dir: str, **kwargs) -> str:
        """Writes a TF Serving version folder; see `export_for_serving`."""
        return export_for_serving(self, base_dir, **kwargs)

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
            "class_names": self._class_names,
            "old_classes": self.old_classes,
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
