"""The 1000 ImageNet classes, shipped with the package, and a decoder.

Each line of `imagenet_classes.tsv` holds a WordNet id and a readable name, in
the order of the classifier outputs of ImageNet-1k models (names that occur
twice in WordNet, such as "crane", are made unique: "crane bird").
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np


@functools.cache
def _classes() -> tuple[tuple[str, str], ...]:
    text = (
        resources.files(__package__)
        .joinpath("imagenet_classes.tsv")
        .read_text(encoding="utf-8")
    )
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)


def imagenet_class_names() -> list[str]:
    """Returns the 1000 ImageNet class names, in classifier output order."""
    return [name for _, name in _classes()]


def decode_imagenet(predictions, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Names the top classes of ImageNet classifier outputs.

    Args:
        predictions: array of shape `(batch, 1000)` or `(1000,)`: probabilities
            or logits of an ImageNet-1k classifier.
        top: int. How many classes to return per image.

    Returns:
        One list per image of `(wordnet_id, name, score)`, highest score first,
        as `keras.applications.imagenet_utils.decode_predictions` returns them.

    Example:

    >>> model = keras_transfer.zoo.efficientnet_lite(0)
    >>> decode_imagenet(model.predict(images), top=1)  # doctest: +SKIP
    [[('n02124075', 'Egyptian cat', 0.71)]]
    """
    scores = np.asarray(predictions)
    if scores.ndim == 1:
        scores = scores[None]
    if scores.ndim != 2 or scores.shape[-1] != 1000:
        raise ValueError(
            "Expected `predictions` of shape (batch, 1000) or (1000,) from an "
            f"ImageNet-1k classifier. Received: shape {scores.shape}"
        )
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"Expected `top` to be an int in [1, 1000]. Received: {top!r}")
    classes = _classes()
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :top]
    return [
        [(*classes[index], float(row[index])) for index in indices]
        for row, indices in zip(scores, order, strict=True)
    ]
