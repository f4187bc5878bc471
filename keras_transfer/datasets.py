"""Small real image tasks that need no download, for examples and demos."""

from __future__ import annotations

import numpy as np


def few_shot_split(labels, per_class: int, seed: int = 0):
    """Indices of `per_class` training examples per class, and of all the rest.

    Returns:
        (train, test): sorted-by-class training indices and the sorted indices of
        every other example, which form the held-out test set.

    Raises:
        ValueError: if a class has fewer than `per_class + 1` examples (none
            would be left to test on).
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if per_class < 1 or (counts <= per_class).any():
        raise ValueError(
            f"Received per_class={per_class}, but the rarest class has "
            f"{counts.min()} examples; pass 1 <= per_class < {counts.min()} so "
            "every class keeps examples to test on."
        )
    rng = np.random.default_rng(seed)
    train = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in classes
        ]
    )
    return train, np.setdiff1d(np.arange(len(labels)), train)


def load_digits(per_class: int = 10, seed: int = 0):
    """scikit-learn's 8x8 handwritten digits as a few-shot image task.

    Returns:
        ((x_train, y_train), (x_test, y_test)) with images of shape
        (n, 8, 8, 1), float32 in [0, 255] like photos, `per_class` training
        images per digit and the other images for testing.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images * (255.0 / 16.0)).astype("float32")[..., None]
    train, test = few_shot_split(digits.target, per_class, seed)
    return (images[train], digits.target[train]), (images[test], digits.target[test])
