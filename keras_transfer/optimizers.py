"""`GroupedOptimizer`: one optimizer per layer group, at its own learning rate."""

from __future__ import annotations

from collections.abc import Sequence

import keras

# Settings that act on all gradients together; the wrapper keeps them.
_SHARED_SETTINGS = (
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)


def group_multipliers(
    num_groups: int,
    layer_decay: float | None = None,
    lr_multipliers: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Learning-rate multipliers of the backbone groups (bottom to top) and head.

    With `layer_decay=d` the head gets 1, the top backbone group `d`, the one
    below `d**2` and so on down (timm's layer decay is 0.75; ULMFiT's
    discriminative rates are `1 / 2.6` per group). `lr_multipliers` gives one
    multiplier per backbone group, bottom to top, instead; the head gets 1.

    Example:

    >>> group_multipliers(3, layer_decay=0.5)
    (0.125, 0.25, 0.5, 1.0)
    """
    if layer_decay is not None and lr_multipliers is not None:
        raise ValueError(
            "Pass `layer_decay` or `lr_multipliers`, not both. Received: "
            f"layer_decay={layer_decay!r}, lr_multipliers={lr_multipliers!r}"
        )
    if lr_multipliers is not None:
        values = tuple(lr_multipliers) if isinstance(lr_multipliers, Sequence) else ()
        if len(values) != num_groups or not all(_positive(m) for m in values):
            raise ValueError(
                f"Expected `lr_multipliers` to be {num_groups} positive numbers, one "
                "per layer group from the bottom up (see `model.layer_groups`). "
                f"Received: lr_multipliers={lr_multipliers!r}"
            )
        return tuple(float(m) for m in values) + (1.0,)
    if layer_decay is None:
        layer_decay = 1.0
    if not _positive(layer_decay) or layer_decay > 1:
        raise ValueError(
            "Expected `layer_decay` in (0, 1]: the factor by which each layer group "
            "learns slower than the group above it (e.g. 0.75, or 1 / 2.6). "
            f"Received: layer_decay={layer_decay!r}"
        )
    return tuple(float(layer_decay) ** (num_groups - i) for i in range(num_groups + 1))


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@keras.saving.register_keras_serializable(package="keras_transfer")
class GroupedOptimizer(keras.optimizers.Optimizer):
    """An optimizer per layer group, each at a multiple of one learning rate.

    Discriminative learning rates done the way they are meant for adaptive
    optimizers: each group has its own copy of `optimizer` whose learning rate
    is `multiplier * learning_rate` (scaling gradients instead is not the same
    for Adam, whose steps do not depend on the gradient's scale). Weight decay
    follows the same per-group rates. `learning_rate` may be a float or a Keras
    schedule, evaluated at the shared `iterations`, so `ReduceLROnPlateau` and
    `LearningRateScheduler` work as usual. Clipping, EMA, loss scaling and
    gradient accumulation act on all gradients together.

    The optimizer is built once for every weight that may ever train, frozen
    or not, so layers can be unfrozen during `fit` without a new optimizer:
    the state of weights already training (Adam's moments of the head) is
    kept. Each group counts its own steps, so Adam's bias correction starts
    afresh for a group when it first trains, as it would in a new optimizer.

    `rate_scale` multiplies the learning rate of every group; reading and
    setting `learning_rate` include it, so `ReduceLROnPlateau` composes with
    it. TransferModel's "auto" rate sets it to 0.1 while the backbone trains.

    L2-SP: with `l2_sp=alpha`, weights of the groups in `anchored_groups` get
    the gradient `alpha * (w - w0)` added, exactly what adding
    `alpha / 2 * ||w - w0||^2` to the loss does, where `w0` are the values at
    `build` time (the pretrained weights). `w0` is optimizer state: it is
    saved and restored with it.

    `TransferModel.compile(layer_decay=..., lr_multipliers=..., l2_sp=...)`
    builds one for its layer groups; standalone, call
    `build(variables, group_ids)`.

    Args:
        optimizer: keras.optimizers.Optimizer, str or dict. The optimizer each
            group uses (its `weight_decay` and `exclude_from_weight_decay` too);
            its learning rate is the base rate.
        learning_rate: float, schedule or None. Overrides `optimizer`'s.
        multipliers: sequence of float. One learning-rate multiplier per group.
        l2_sp: float or None. L2-SP strength, see above.
        anchored_groups: sequence of int. Groups that L2-SP pulls back.

    Example:

    >>> a, b = keras.Variable([1.0]), keras.Variable([1.0])
    >>> opt = GroupedOptimizer(keras.optimizers.SGD(0.1), multipliers=(0.5, 1.0))
    >>> opt.build([a, b], group_ids=[0, 1])
    >>> opt.apply([keras.ops.ones(1), keras.ops.ones(1)], [a, b])
    >>> float(a[0]), float(b[0])
    (0.95, 0.9)
    """

    def __init__(
        self,
        optimizer,
        multipliers: Sequence[float],
        l2_sp: float | None = None,
        anchored_groups: Sequence[int] = (),
        learning_rate=None,
        name: str | None = None,
        **kwargs,
    ):
        template = keras.optimizers.get(optimizer)
        if isinstance(
            template, (GroupedOptimizer, keras.optimizers.LossScaleOptimizer)
        ):
            raise TypeError(
                "Expected a plain optimizer inside GroupedOptimizer (for mixed "
                "precision, set the dtype policy: Keras adds the loss scaling). "
                f"Received: optimizer={optimizer!r}"
            )
        values = list(multipliers) if isinstance(multipliers, Sequence) else []
        if not values or not all(_positive(m) for m in values):
            raise ValueError(
                "Expected `multipliers` to be a sequence of positive numbers, one "
                f"per group. Received: multipliers={multipliers!r}"
            )
        if l2_sp is not None:
            groups = list(anchored_groups)
            if (
                not _positive(l2_sp)
                or not groups
                or not all(isinstance(g, int) and 0 <= g < len(values) for g in groups)
            ):
                raise ValueError(
                    "Expected `l2_sp` to be a positive number with "
                    f"`anchored_groups` naming groups in [0, {len(values)}). "
                    f"Received: l2_sp={l2_sp!r}, anchored_groups={anchored_groups!r}"
                )
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "Set `weight_decay` on the optimizer inside, so that each group "
                "decays at its own rate. Received: "
                f"weight_decay={kwargs['weight_decay']!r}"
            )
        kwargs.pop("weight_decay", None)
        config = template.get_config()
        shared = {key: config.pop(key) for key in _SHARED_SETTINGS if key in config}
        # Given here (or saved by get_config), shared settings win over the inner's.
        shared.update({k: v for k, v in kwargs.items() if k in _SHARED_SETTINGS})
        kwargs = {k: v for k, v in kwargs.items() if k not in _SHARED_SETTINGS}
        template_rate = config.pop("learning_rate")
        if learning_rate is None:
            learning_rate = template_rate
        if isinstance(learning_rate, dict):
            learning_rate = keras.saving.deserialize_keras_object(learning_rate)
        name = name or f"grouped_{template.name}"
        super().__init__(learning_rate=learning_rate, name=name, **shared, **kwargs)
        self._rate_scale = self.add_variable((), initializer="ones", name="rate_scale")
        self.optimizer = keras.optimizers.serialize(template)
        self.multipliers = tuple(float(m) for m in values)
        self.l2_sp = None if l2_sp is None else float(l2_sp)
        self.anchored_groups = tuple(int(g) for g in anchored_groups)
        self._group_optimizers = [
            template.__class__.from_config(
                {
                    **config,
                    "name": f"{name}_group_{i}",
                    "learning_rate": self._scaled_learning_rate(multiplier),
                }
            )
            for i, multiplier in enumerate(self.multipliers)
        ]
        excluded = getattr(template, "_exclude_from_weight_decay", None)
        pattern = getattr(template, "_exclude_from_weight_decay_pattern", None)
        for group_optimizer in self._group_optimizers:
            if excluded:
                group_optimizer._exclude_from_weight_decay = set(excluded)
            if pattern is not None:
                group_optimizer._exclude_from_weight_decay_pattern = pattern
        self._group_ids = {}
        self._anchors = {}

    @property
    def learning_rate(self):
        """The base rate (the head's), times `rate_scale`."""
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        # Set in the same units as read, so ReduceLROnPlateau composes with
        # `rate_scale`.
        if isinstance(value, (int, float)):
            value = float(value) / float(self._rate_scale.numpy())
        keras.optimizers.Optimizer.learning_rate.fset(self, value)

    @property
    def rate_scale(self) -> float:
        """A factor on the learning rate (TransferModel's "auto" rate sets it)."""
        return float(self._rate_scale.numpy())

    @rate_scale.setter
    def rate_scale(self, value: float) -> None:
        if not _positive(value):
            raise ValueError(
                f"Expected `rate_scale` to be a positive number. Received: {value!r}"
            )
        self._rate_scale.assign(float(value))

    def _get_current_learning_rate(self):
        return super()._get_current_learning_rate() * self._rate_scale

    def _scaled_learning_rate(self, multiplier):
        def learning_rate():
            return self._get_current_learning_rate() * multiplier

        return learning_rate

    @property
    def group_optimizers(self) -> list:
        """The optimizer of each group, in the order of `multipliers`."""
        return list(self._group_optimizers)

    def build(self, variables, group_ids=None):
        if self.built:
            return
        variables = list(variables)
        if group_ids is None:
            raise ValueError(
                "GroupedOptimizer needs to know the group of each variable: call "
                "`build(variables, group_ids)`, or compile a TransferModel with "
                "`layer_decay=` or `lr_multipliers=`."
            )
        group_ids = [int(g) for g in group_ids]
        if len(group_ids) != len(variables) or not all(
            0 <= g < len(self.multipliers) for g in group_ids
        ):
            raise ValueError(
                f"Expected one group id in [0, {len(self.multipliers)}) per "
                f"variable ({len(variables)} variables). Received: "
                f"group_ids={group_ids!r}"
            )
        super().build(variables)
        for key, group in zip(map(self._var_key, variables), group_ids, strict=True):
            self._group_ids[key] = group
        for i, optimizer in enumerate(self._group_optimizers):
            optimizer.build(
                [v for v, g in zip(variables, group_ids, strict=True) if g == i]
            )
        if self.l2_sp is not None:
            for variable, group in zip(variables, group_ids, strict=True):
                if group in self.anchored_groups:
                    anchor = self.add_variable_from_reference(variable, "pretrained")
                    anchor.assign(variable)
                    self._anchors[self._var_key(variable)] = anchor

    @property
    def anchors(self) -> list:
        """The L2-SP reference values `w0`, one per anchored variable."""
        return list(self._anchors.values())

    def anchor(self, variable):
        """The L2-SP reference value of `variable`, or None if it has none."""
        return self._anchors.get(self._var_key(variable))

    def keep_anchors_of(self, other: GroupedOptimizer) -> None:
        """Takes over `other`'s L2-SP reference values for the same variables."""
        for key, anchor in self._anchors.items():
            if key in other._anchors:
                anchor.assign(other._anchors[key])

    @property
    def variables(self):
        nested = [v for opt in self._group_optimizers for v in opt.variables]
        return self._variables[:] + nested

    # The group optimizers are saved as attributes of this one: only the own
    # variables (iterations, learning rate, anchors) are stored here.
    def save_own_variables(self, store):
        for i, variable in enumerate(self._variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        if len(store.keys()) != len(self._variables):
            raise ValueError(
                f"Cannot restore optimizer {self.name!r}: it has "
                f"{len(self._variables)} variables of its own, the saved one "
                f"{len(store.keys())}. Compile the model as it was when saved."
            )
        for i, variable in enumerate(self._variables):
            variable.assign(store[str(i)])

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self._anchors:
            grads = [
                g
                if self._var_key(v) not in self._anchors
                else g + self.l2_sp * (v - self._anchors[self._var_key(v)])
                for g, v in zip(grads, trainable_variables, strict=True)
            ]
        super()._backend_apply_gradients(grads, trainable_variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        batches = [([], []) for _ in self._group_optimizers]
        for grad, variable in zip(grads, trainable_variables, strict=True):
            group_grads, group_variables = batches[
                self._group_ids[self._var_key(variable)]
            ]
            group_grads.append(grad)
            group_variables.append(variable)
        for optimizer, (group_grads, group_variables) in zip(
            self._group_optimizers, batches, strict=True
        ):
            if group_variables:
                optimizer.apply(group_grads, group_variables)

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        # Keras passes the model's trainable weights, a subset of the weights
        # this optimizer was built for, in another order: match by variable.
        for variable in trainable_variables:
            average = self._model_variables_moving_average[
                self._get_variable_index(variable)
            ]
            variable.assign(average)

    def get_config(self):
        return {
            **super().get_config(),
            "optimizer": self.optimizer,
            "multipliers": list(self.multipliers),
            "l2_sp": self.l2_sp,
            "anchored_groups": list(self.anchored_groups),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config.pop("weight_decay", None)  # the groups' optimizers decay
        return super().from_config(config, custom_objects=custom_objects)

    def __repr__(self) -> str:
        kind = self.optimizer["class_name"]
        return f"<GroupedOptimizer of {kind}, multipliers={list(self.multipliers)}>"
