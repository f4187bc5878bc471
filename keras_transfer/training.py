"""Training a `TransferModel`: compile defaults, per-group optimizers, fine_tune."""

from __future__ import annotations

import logging

import keras

from keras_transfer.callbacks import GradualUnfreeze
from keras_transfer.heads import TASKS
from keras_transfer.optimizers import GroupedOptimizer, group_multipliers

logger = logging.getLogger("keras_transfer")

HEAD_LEARNING_RATE = 1e-3
FINE_TUNE_LEARNING_RATE = 1e-4


_LWF_DEFAULTS = {"temperature": 2.0, "weight": 1.0}


def _lwf_settings(lwf) -> dict:
    if lwf is True:
        return dict(_LWF_DEFAULTS)
    if isinstance(lwf, dict) and not set(lwf) - set(_LWF_DEFAULTS):
        settings = {**_LWF_DEFAULTS, **lwf}
        if all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for v in settings.values()
        ):
            return {key: float(value) for key, value in settings.items()}
    raise ValueError(
        "Expected `lwf` to be None, True, or a dict with positive 'temperature' "
        f"and/or 'weight'. Received: lwf={lwf!r}"
    )


class _Distillation:
    """The teacher of Learning without Forgetting and its loss."""

    def __init__(self, teacher, old_classes):
        self.teacher = teacher
        self.old_classes = old_classes
        self.settings = dict(_LWF_DEFAULTS)

    def loss(self, x, y_pred):
        ops = keras.ops
        k = self.old_classes
        temperature = self.settings["temperature"]
        tiny = 1e-30  # float32 probabilities far below this are 0 to softmax

        def soft_log(probabilities):
            # log p = logit - constant per row, so this is the temperature
            # softmax of the logits of the old classes alone, renormalised.
            logits = ops.log(ops.maximum(ops.cast(probabilities, "float32"), tiny))
            return ops.log_softmax(logits[:, :k] / temperature, axis=-1)

        teacher = soft_log(ops.stop_gradient(self.teacher(x, training=False)))
        student = soft_log(y_pred)
        kl = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1)
        return self.settings["weight"] * temperature**2 * ops.mean(kl)


class TrainingMixin:
    """`compile`, `fit` and `fine_tune` of `TransferModel` (see there).

    Expects `layer_groups`, `backbone`, `task` and `_compile_request` from the
    model it is mixed into, before `keras.Model`.
    """

    def _backbone_is_trainable(self) -> bool:
        return bool(self.backbone.trainable_weights)

    def _grouped_optimizer(self) -> GroupedOptimizer | None:
        """The model's GroupedOptimizer (inside Keras' loss scaling), or None."""
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        return optimizer if isinstance(optimizer, GroupedOptimizer) else None

    def _set_auto_rate_scale(self, grouped: GroupedOptimizer) -> None:
        if self._auto_learning_rate() is not None:
            trains = self._backbone_is_trainable()
            grouped.rate_scale = (
                FINE_TUNE_LEARNING_RATE / HEAD_LEARNING_RATE if trains else 1.0
            )

    def _trainable_changed(self) -> None:
        if not self.compiled or self._compile_request is None:
            return
        grouped = self._grouped_optimizer()
        if grouped is not None:
            # Built for every weight: keep its state, retrace the train step.
            self._set_auto_rate_scale(grouped)
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
                # Grouped: the "auto" drop to 1e-4 is its rate_scale, set below.
                rate = HEAD_LEARNING_RATE
                if not grouped and self._backbone_is_trainable():
                    rate = FINE_TUNE_LEARNING_RATE
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
        previous = self._grouped_optimizer() if self.compiled else None
        default_loss, default_metrics = TASKS[self.task][1:]
        super().compile(
            optimizer=optimizer,
            loss=default_loss if loss == "auto" else loss,
            metrics=list(default_metrics) if metrics == "auto" else metrics,
            **kwargs,
        )
        self._compile_request = request
        self._compiled_optimizer = self.optimizer
        if grouped:
            optimizer = self._grouped_optimizer()
            optimizer.build(*self._variable_groups())
            self._set_auto_rate_scale(optimizer)
            if previous is not None:
                optimizer.keep_anchors_of(previous)

    def _auto_learning_rate(self):
        """The "auto" rate for the current trainable state, or None if not auto."""
        request = self._compile_request or {}
        if not isinstance(request.get("optimizer"), str):
            return None
        if request.get("learning_rate") is not None:
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

    def fit(self, *args, lwf=None, **kwargs):
        """`keras.Model.fit`, plus Learning without Forgetting.

        Args:
            *args, **kwargs: as for `keras.Model.fit`.
            lwf: None, True, or a dict with `temperature` (default 2.0) and
                `weight` (default 1.0). Learning without Forgetting (Li &
                Hoiem, 2017), for a model whose output was widened (`widen`,
                or `keep_top=True` with `extra_classes`) and that now trains
                on data of the new classes only: the training loss gets
                `weight * T**2 * KL(teacher || student)` between the old
                classes' probabilities, renormalised over the old classes and
                softened by the temperature `T`, of a frozen copy of the model
                (the teacher, taken at the first `fit` with `lwf`, i.e. before
                the new classes were learnt) and of the model. It keeps the
                old classes' outputs close to the teacher's. The term is an
                unweighted mean over the batch (sample and class weights
                apply to the usual loss only). The reported `loss` includes
                it; validation losses do not. The teacher costs one more
                forward pass per step.
        """
        self._set_distillation(lwf)
        # Callbacks that change trainable layers during fit first set up the
        # optimizer for that (see GradualUnfreeze), before any of them runs.
        callbacks = kwargs.get("callbacks", args[5] if len(args) > 5 else None)
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = callbacks.callbacks
        for callback in callbacks or ():
            prepare = getattr(callback, "prepare_model", None)
            if prepare is not None:
                prepare(self)
        # BackupAndRestore sets this in on_train_begin and Keras never clears
        # it: a later fit of the same model would skip its first epochs.
        self._initial_epoch = None
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._set_distillation(None)

    # --- Learning without Forgetting -----------------------------------------

    def _set_distillation(self, lwf) -> None:
        settings = None if lwf is None or lwf is False else _lwf_settings(lwf)
        if settings is not None:
            if self.task != "multiclass" or not self.old_classes:
                raise ValueError(
                    "lwf applies to a softmax classifier with new output units: "
                    "widen it first (`model.widen(new_classes)`, or keep_top=True "
                    f"with extra_classes). Received: task={self.task!r}, "
                    f"old_classes={self.old_classes!r}"
                )
            holder = self.__dict__.get("_lwf")
            if holder is None or holder.old_classes != self.old_classes:
                holder = _Distillation(self._frozen_copy(), self.old_classes)
            holder.settings = settings
            settings = holder
        previous = self.__dict__.get("_lwf_active")
        if previous is not settings and (previous or settings):
            self.train_function = None  # retrace with or without the teacher
        # Plain objects, so that Keras does not track the teacher's weights.
        object.__setattr__(self, "_lwf_active", settings)
        if settings is not None:
            object.__setattr__(self, "_lwf", settings)

    def _frozen_copy(self) -> keras.Model:
        teacher = self.__class__.from_config(self.get_config())
        teacher.set_weights(self.get_weights())
        teacher.trainable = False
        return teacher

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        lwf = self.__dict__.get("_lwf_active")
        if not training or lwf is None:
            return loss
        return loss + lwf.loss(x, y_pred)

    def fine_tune(
        self,
        x=None,
        y=None,
        *,
        epochs: int = 5,
        freeze_epochs: int = 1,
        layer_decay: float | None = None,
        l2_sp: float | None = None,
        callbacks=None,
        **kwargs,
    ) -> keras.callbacks.History:
        """The head first, then every layer at a lower rate: one call, one History.

        fastai's `fine_tune` and LP-FT (Kumar et al., 2022): `freeze_epochs`
        epochs train the new head on the frozen backbone (so its random weights
        do not send large gradients into the pretrained ones), then every layer
        trains for `epochs` more. One `fit`, so one History, and callbacks such
        as EarlyStopping, ModelCheckpoint and BackupAndRestore work as usual.

        The model keeps its compile arguments (or gets `compile()`'s defaults);
        `layer_decay` and `l2_sp`, when given, replace those. With the "auto"
        learning rate the head phase runs at 1e-3 and the rest at 1e-4; with
        `layer_decay=d` each layer group below the head learns `d` times as
        fast as the one above it (discriminative learning rates). The default
        is one rate for all: on 10 images per class of digits and of
        Fashion-MNIST, layer decay
        did no better (`benchmarks/fine_tune_layer_decay.py`).

        Args:
            x, y: the training data, as for `fit`.
            epochs: int. Epochs with every layer training.
            freeze_epochs: int. Epochs of the head alone first (0 skips them).
            layer_decay: float or None. See `compile`. None keeps the compiled
                model's `layer_decay` or `lr_multipliers`, else one rate for all.
            l2_sp: float or None. See `compile`. None keeps the compiled one.
            callbacks: list of callbacks, as for `fit`.
            **kwargs: passed to `fit` (`validation_data`, `batch_size`, `lwf`,
                ...).

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
        if layer_decay is not None:
            request.pop("lr_multipliers", None)
            request["layer_decay"] = layer_decay
        elif "lr_multipliers" not in request:
            request.setdefault("layer_decay", 1.0)  # grouped, one rate
        if l2_sp is not None:
            request["l2_sp"] = l2_sp
        self.compile(**request)
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
        if not self.compiled:
            raise ValueError(
                "Compile the model before changing trainable layers during fit: "
                "call `model.compile()` first."
            )
        if self._grouped_optimizer() is not None:
            return
        if self._compile_request is None or self.optimizer is not getattr(
            self, "_compiled_optimizer", None
        ):
            raise ValueError(
                "The model was compiled with keras.Model.compile, whose arguments "
                "TransferModel does not know; compile it with `model.compile(...)` "
                f"(optimizer, loss, metrics as before). Received: {self.optimizer!r}"
            )
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
