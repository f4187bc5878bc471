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


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_idx(path: str, offset: int) -> np.ndarray:
    import gzip

    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(directory: str = FASHION_MNIST_DIR):
    """Fashion-MNIST from local idx files, e.g. Debian's `dataset-fashion-mnist`.

    Args:
        directory: str. The folder holding `{train,t10k}-images-idx3-ubyte.gz`
            and `{train,t10k}-labels-idx1-ubyte.gz` (Debian puts them in
            `/usr/share/datasets/fashion-mnist`).

    Returns:
        ((x_train, y_train), (x_test, y_test)): uint8 images of shape
        (n, 28, 28, 1) and int labels; `FASHION_MNIST_CLASSES` names them.

    Raises:
        FileNotFoundError: naming the missing file and how to get it.
    """
    import os

    splits = []
    for split in ("train", "t10k"):
        paths = [
            os.path.join(directory, f"{split}-{kind}-ubyte.gz")
            for kind in ("images-idx3", "labels-idx1")
        ]
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Fashion-MNIST file not found: {path}. Install Debian's "
                    "package (`apt-get install dataset-fashion-mnist`) or pass "
                    "the folder holding the four idx files. Received: "
                    f"directory={directory!r}"
                )
        labels = _read_idx(paths[1], 8).astype("int64")
        images = _read_idx(paths[0], 16)
        if images.size != len(labels) * 28 * 28:
            raise ValueError(
                f"{paths[0]} holds {images.size} bytes of pixels, not "
                f"{len(labels)} 28x28 images: the file is damaged."
            )
        splits.append((images.reshape(-1, 28, 28, 1), labels))
    return tuple(splits)
