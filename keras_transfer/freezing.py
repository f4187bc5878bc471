"""Layer groups, freezing and the head-only / fine-tune decision."""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import NamedTuple

import keras
import numpy as np

logger = logging.getLogger("keras_transfer")

DEFAULT_FALLBACK_GROUPS = 4
DEFAULT_MIN_EXAMPLES_PER_CLASS = 100


class LayerGroup(NamedTuple):
    """A contiguous block of backbone layers that is frozen or unfrozen together."""

    name: str
    layers: tuple

    def __repr__(self) -> str:
        return f"LayerGroup({self.name!r}, {len(self.layers)} layers)"


def _children(layer) -> list:
    return getattr(layer, "layers", None) or layer._layers


def weighted_layer_paths(layer, prefix: str = ""):
    """Yields `(path, layer)` for every leaf layer with weights inside `layer`.

    Paths join layer names with "/" (`"backbone/conv1"`); order is topological.
    A layer whose sub-layers hold no weights counts as a leaf.
    """
    for child in _children(layer):
        path = f"{prefix}{child.name}"
        nested = (
            list(weighted_layer_paths(child, f"{path}/")) if _children(child) else []
        )
        if nested:
            yield from nested
        elif child.weights:
            yield path, child


def weighted_layers(layer) -> list:
    """All leaf layers with weights inside `layer`, in topological order."""
    return [leaf for _, leaf in weighted_layer_paths(layer)]


def layer_groups(
    model,
    block_pattern: str | None = None,
    num_groups: int = DEFAULT_FALLBACK_GROUPS,
) -> list[LayerGroup]:
    """Splits a network's weighted layers into groups, bottom to top.

    With a `block_pattern` (a regular expression searched in layer names, whose
    first group names the block) consecutive layers of one block form a group;
    layers before the first match form a `"stem"` group and unmatched layers
    after it join the group before them. Without a pattern, or when the pattern
    matches nothing, the layers are split evenly by depth into `num_groups`.

    Args:
        model: keras.Model or Layer. The network to split.
        block_pattern: str or None. See above.
        num_groups: int. Number of groups for the split by depth.

    Returns:
        A list of `LayerGroup(name, layers)`, from the input side up.

    Example:

    >>> net = keras.applications.MobileNetV3Small(
    ...     input_shape=(32, 32, 3), include_top=False, weights=None)
    >>> [g.name for g in layer_groups(net, r"^expanded_conv(?:_(\\d+))?_")][:3]
    ['stem', 'block 0', 'block 1']
    """
    layers = weighted_layers(model)
    groups: list[tuple[str, list]] = []
    if block_pattern:
        pattern = re.compile(block_pattern)
        for layer in layers:
            match = pattern.search(layer.name)
            if match:
                key = f"block {match.group(1) if match.groups() else match.group(0)}"
                key = key.replace("block None", "block 0")
                if not groups or groups[-1][0] != key:
                    groups.append((key, []))
            elif not groups:
                groups.append(("stem", []))
            groups[-1][1].append(layer)
        if all(name == "stem" for name, _ in groups):
            groups = []
    if not groups and layers:
        count = max(1, min(num_groups, len(layers)))
        bounds = np.linspace(0, len(layers), count + 1).round().astype(int)
        groups = [
            (f"depth {i + 1}/{count}", layers[start:end])
            for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
        ]
    return [LayerGroup(name, tuple(members)) for name, members in groups]


def set_trainable_groups(backbone, groups: list[LayerGroup], top_groups: int) -> None:
    """Makes the top `top_groups` groups of `backbone` trainable, the rest frozen."""
    if isinstance(top_groups, bool) or not isinstance(top_groups, (int, np.integer)):
        raise TypeError(
            f"Expected `top_groups` to be an int. Received: top_groups={top_groups!r}"
        )
    if not 0 <= top_groups <= len(groups):
        raise ValueError(
            f"Expected `top_groups` between 0 and {len(groups)} (the number of "
            f"layer groups). Received: top_groups={top_groups}"
        )
    train_groups(backbone, groups, range(len(groups) - top_groups, len(groups)))


def group_indices(groups: list[LayerGroup], selection) -> list[int]:
    """Indices into `groups` of a selection given by index or by group name."""
    names = [group.name for group in groups]
    if isinstance(selection, (str, int, np.integer)):
        selection = [selection]
    indices = []
    for item in selection:
        if isinstance(item, str) and item in names:
            indices.append(names.index(item))
        elif (
            isinstance(item, (int, np.integer))
            and not isinstance(item, bool)
            and -len(groups) <= item < len(groups)
        ):
            indices.append(int(item) % len(groups))
        else:
            raise ValueError(
                f"Expected layer groups as indices below {len(groups)} or names "
                f"from {names}. Received: {item!r}"
            )
    return sorted(set(indices))


def set_trainable(layer, value: bool) -> None:
    """`layer.trainable = value` that also reaches sub-layers when it is a no-op.

    On the TensorFlow backend, assigning an attribute the value it already has
    returns early (TensorFlow's AutoTrackable), so `backbone.trainable = True`
    on a trainable backbone would leave its frozen sub-layers frozen.
    """
    keras.layers.Layer.trainable.fset(layer, bool(value))


def train_groups(backbone, groups: list[LayerGroup], selection) -> None:
    """Makes the selected groups of `backbone` trainable and every other frozen."""
    chosen = set(group_indices(groups, selection))
    flags = {
        id(layer): index in chosen
        for index, group in enumerate(groups)
        for layer in group.layers
    }
    # Parents come before their sub-layers, so each leaf gets its own flag last.
    for layer in backbone._flatten_layers(include_self=True):
        set_trainable(layer, flags.get(id(layer), bool(chosen)))


@dataclasses.dataclass(frozen=True)
class StrategyDecision:
    """What to train, and why.

    Attributes:
        strategy: `"head_only"` (freeze the backbone, train the new head) or
            `"fine_tune"` (train everything).
        examples_per_class: labelled examples of the rarest class.
        threshold: the `min_examples_per_class` the decision used.
        reason: one sentence for logs and reports.
    """

    strategy: str
    examples_per_class: int
    threshold: int
    reason: str

    def __str__(self) -> str:
        return f"{self.strategy}: {self.reason}"


def _examples_per_class(y) -> int:
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot or multi-label
        counts = labels.sum(axis=0)
        return int(counts.min())
    _, counts = np.unique(labels.reshape(len(labels), -1)[:, 0], return_counts=True)
    return int(counts.min())


def choose_strategy(
    y=None,
    *,
    num_examples: int | None = None,
    num_classes: int | None = None,
    min_examples_per_class: int = DEFAULT_MIN_EXAMPLES_PER_CLASS,
) -> StrategyDecision:
    """The field's rule of thumb: little data -> head only, a lot -> fine-tune.

    With fewer than `min_examples_per_class` labelled examples in the rarest
    class, fine-tuning millions of pretrained weights overfits and BatchNorm
    statistics drift, so only the new head is trained on frozen features. With
    at least that many, fine-tuning the whole network usually wins. 100 per class
    is the default threshold (where the measured gap closes for ImageNet CNNs on
    small image datasets); pass your own.

    Args:
        y: array-like or None. Labels: class indices or names, or one-hot rows.
        num_examples: int or None. Instead of `y`: the number of examples...
        num_classes: int or None. ...spread over this many classes (assumed even).
        min_examples_per_class: int. The threshold.

    Returns:
        A `StrategyDecision`; its `reason` is also logged at INFO level.

    Example:

    >>> choose_strategy(num_examples=100, num_classes=10).strategy
    'head_only'
    """
    if (
        isinstance(min_examples_per_class, bool)
        or not isinstance(min_examples_per_class, (int, np.integer))
        or min_examples_per_class < 1
    ):
        raise ValueError(
            "Expected `min_examples_per_class` to be a positive int. "
            f"Received: min_examples_per_class={min_examples_per_class!r}"
        )
    if y is not None:
        if len(y) == 0:
            raise ValueError("Expected at least one label. Received: y of length 0")
        per_class = _examples_per_class(y)
        basis = "the rarest class has"
    elif num_examples is not None and num_classes is not None:
        if num_examples < 0 or num_classes < 1:
            raise ValueError(
                "Expected num_examples >= 0 and num_classes >= 1. Received: "
                f"num_examples={num_examples}, num_classes={num_classes}"
            )
        per_class = num_examples // num_classes
        basis = f"{num_examples} examples over {num_classes} classes give"
    else:
        raise ValueError(
            "Pass the labels `y`, or both `num_examples` and `num_classes`. "
            f"Received: y=None, num_examples={num_examples}, "
            f"num_classes={num_classes}"
        )
    if per_class < min_examples_per_class:
        strategy = "head_only"
        reason = (
            f"{basis} {per_class} examples per class, fewer than "
            f"{min_examples_per_class}: train the new head on frozen pretrained "
            "features (fine-tuning the backbone would overfit)"
        )
    else:
        strategy = "fine_tune"
        reason = (
            f"{basis} {per_class} examples per class, at least "
            f"{min_examples_per_class}: fine-tune the whole network"
        )
    decision = StrategyDecision(strategy, per_class, min_examples_per_class, reason)
    logger.info("Strategy %s", decision)
    return decision
