"""Schedules that change which layer groups train, during `fit`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import numpy as np

logger = logging.getLogger("keras_transfer")


def _positive_int(value) -> bool:
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        and value > 0
    )


class UnfreezeSchedule(keras.callbacks.Callback):
    """Base of the schedules: which layer groups train in each epoch.

    A subclass implements `stage(epoch, num_groups)`, returning the backbone
    group indices that train in that epoch (bottom is 0) and whether the head
    trains. The stage depends on the epoch alone, so a run resumed by
    `keras.callbacks.BackupAndRestore` continues at the right stage.

    On a `TransferModel`, `fit` first makes the optimizer a `GroupedOptimizer`
    (built for every weight, see `TransferModel.compile`), so a change of stage
    keeps the optimizer state of weights that were training (the head's Adam
    moments), needs no recompile and retraces the train step once. With
    `learning_rate` left to "auto" the rate drops from 1e-3 to 1e-4 when the
    first backbone group trains, as with `unfreeze()`.

    BatchNorm layers of unfrozen groups stay in inference mode unless the
    model was built with `batchnorm="trainable"`.

    Attributes:
        changes: list of `(epoch, description)`, one per change of stage.
    """

    def __init__(self):
        super().__init__()
        self.changes = []
        self._current = None

    def stage(self, epoch: int, num_groups: int) -> tuple[tuple[int, ...], bool]:
        raise NotImplementedError

    def prepare_model(self, model) -> None:
        """Called by `TransferModel.fit` before training starts."""
        if not hasattr(model, "set_trainable_groups"):
            raise TypeError(
                f"{type(self).__name__} needs a keras_transfer.TransferModel, "
                f"whose layer groups it unfreezes. Received: {type(model).__name__}"
            )
        model.use_grouped_optimizer()
        self._current = None

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, "set_trainable_groups"):
            self.prepare_model(self.model)  # raises: not a TransferModel

    def on_epoch_begin(self, epoch, logs=None):
        groups = self.model.layer_groups
        trainable, head = self.stage(epoch, len(groups))
        state = (tuple(sorted(trainable)), bool(head))
        if state == self._current:
            return
        self.model.set_trainable_groups(state[0], head=state[1])
        self._current = state
        names = [groups[i].name for i in state[0]]
        description = (
            f"{len(names)} of {len(groups)} backbone groups trainable "
            f"({', '.join(names) or 'none'}), head "
            + ("trainable" if head else "frozen")
        )
        self.changes.append((epoch, description))
        logger.info("Epoch %d: %s", epoch + 1, description)


class GradualUnfreeze(UnfreezeSchedule):
    """Gradual unfreezing: the backbone starts frozen, groups thaw from the top.

    ULMFiT's recipe (Howard & Ruder, 2018) as a drop-in callback: the first
    epochs train the new head on the frozen backbone, then every `every`
    epochs (or at the epochs listed in `at_epochs`) the next `groups_per_step`
    layer groups from the top of `model.layer_groups` start training too, up
    to `max_groups` (default: all). Combine with discriminative learning
    rates, `model.compile(layer_decay=...)`.

    Args:
        every: int or None. Epochs per stage.
        groups_per_step: int. Groups unfrozen at each step.
        at_epochs: sequence of int or None. Instead of `every`, the (0-based)
            epochs at which a step happens, increasing.
        max_groups: int or None. Stop unfreezing once this many groups train.

    Example:

    >>> model.compile()
    >>> model.fit(x, y, epochs=6, callbacks=[GradualUnfreeze(every=2)])
    """

    def __init__(
        self,
        every: int | None = 1,
        groups_per_step: int = 1,
        at_epochs: Sequence[int] | None = None,
        max_groups: int | None = None,
    ):
        super().__init__()
        if at_epochs is not None:
            epochs = list(at_epochs) if isinstance(at_epochs, Sequence) else None
            if (
                not epochs
                or not all(
                    isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                    for e in epochs
                )
                or min(epochs) < 0
                or sorted(set(epochs)) != epochs
            ):
                raise ValueError(
                    "Expected `at_epochs` to be increasing epoch numbers >= 0, "
                    f"e.g. [2, 4, 6]. Received: at_epochs={at_epochs!r}"
                )
            every = None
        elif not _positive_int(every):
            raise ValueError(
                "Expected `every` to be a positive number of epochs (or pass "
                f"`at_epochs`). Received: every={every!r}"
            )
        if not _positive_int(groups_per_step):
            raise ValueError(
                "Expected `groups_per_step` to be a positive int. Received: "
                f"groups_per_step={groups_per_step!r}"
            )
        if max_groups is not None and not _positive_int(max_groups):
            raise ValueError(
                "Expected `max_groups` to be a positive int or None. Received: "
                f"max_groups={max_groups!r}"
            )
        self.every = every
        self.groups_per_step = int(groups_per_step)
        self.at_epochs = None if at_epochs is None else [int(e) for e in at_epochs]
        self.max_groups = max_groups

    def stage(self, epoch, num_groups):
        if self.at_epochs is not None:
            steps = sum(1 for e in self.at_epochs if e <= epoch)
        else:
            steps = epoch // self.every
        count = min(steps * self.groups_per_step, num_groups)
        if self.max_groups is not None:
            count = min(count, self.max_groups)
        return tuple(range(num_groups - count, num_groups)), True


class ChainThaw(UnfreezeSchedule):
    """Chain-thaw (Felbo et al., 2017): one layer group at a time, then all.

    First the new head trains alone on the frozen backbone; then each backbone
    group trains alone, bottom to top, with everything else frozen (the head
    too); finally every layer trains. Each stage lasts `epochs_per_stage`
    epochs, the last one the rest of `fit`: a backbone of `n` groups needs
    `(n + 1) * epochs_per_stage + 1` epochs or more.

    Args:
        epochs_per_stage: int. Epochs of each stage but the last.
    """

    def __init__(self, epochs_per_stage: int = 1):
        super().__init__()
        if not _positive_int(epochs_per_stage):
            raise ValueError(
                "Expected `epochs_per_stage` to be a positive int. Received: "
                f"epochs_per_stage={epochs_per_stage!r}"
            )
        self.epochs_per_stage = int(epochs_per_stage)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        needed = (len(self.model.layer_groups) + 1) * self.epochs_per_stage + 1
        epochs = (self.params or {}).get("epochs")
        if epochs is not None and epochs < needed:
            logger.warning(
                "ChainThaw: %d epochs reach only part of the chain; all %d stages "
                "need at least %d epochs.",
                epochs,
                len(self.model.layer_groups) + 2,
                needed,
            )

    def stage(self, epoch, num_groups):
        index = epoch // self.epochs_per_stage
        if index == 0:
            return (), True
        if index <= num_groups:
            return (index - 1,), False
        return tuple(range(num_groups)), True
