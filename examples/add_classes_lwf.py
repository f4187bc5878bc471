"""Adding classes to a trained classifier, with and without forgetting the old ones.

A model learns Fashion-MNIST's classes 0-6 (T-shirt ... Shirt). Then three new
classes arrive (Sneaker, Bag, Ankle boot) with training images of those
classes only. The output layer is widened from 7 to 10 units (the 7 old units
keep their weights) and trained on the new images:
  - plainly: the usual loss on the new classes;
  - with Learning without Forgetting (Li & Hoiem): plus a distillation loss
    keeping the old classes' outputs close to those of the model before.
Printed: accuracy on held-out images of the old classes and of the new ones,
over all 10 classes, and on the old images among the old classes only.

Offline: Fashion-MNIST from Debian's `dataset-fashion-mnist`; without it, or
with `--dataset digits`, scikit-learn's digits (0-6, then 7-9).

Run: python examples/add_classes_lwf.py [--seed 0] [--per-class 100]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402
from keras_transfer.data import resize_images  # noqa: E402

OLD = 7  # classes 0-6 first, then 7-9


def load(dataset: str, size: int, per_class: int, test_per_class: int, seed: int):
    """(train, test, names) with images resized to `size`, 0-255 grey."""
    if dataset == "fashion":
        (x, y), (x_test, y_test) = kt.datasets.load_fashion_mnist()
        names = list(kt.datasets.FASHION_MNIST_CLASSES)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images * (255.0 / 16.0))[..., None]
        y = digits.target
        names = [str(d) for d in range(10)]
        train, test = kt.datasets.few_shot_split(y, per_class, seed)
        x, y, x_test, y_test = x[train], y[train], x[test], y[test]
    rng = np.random.default_rng(seed)

    def pick(labels, count):
        return np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:count] for c in range(10)]
        )

    train, test = pick(y, per_class), pick(y_test, test_per_class)
    return (
        (resize_images(x[train], size), y[train]),
        (resize_images(x_test[test], size), y_test[test]),
        names,
    )


def accuracies(model, x, y):
    probabilities = model.predict(x, batch_size=64, verbose=0)
    predicted = probabilities.argmax(axis=1)
    old = y < OLD
    return {
        "old classes": float((predicted[old] == y[old]).mean()),
        "new classes": float((predicted[~old] == y[~old]).mean())
        if (~old).any()
        else float("nan"),
        "old among old": float(
            (probabilities[old, :OLD].argmax(axis=1) == y[old]).mean()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion", "digits"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=20, help="first task")
    parser.add_argument("--new-epochs", type=int, default=8, help="new classes")
    parser.add_argument(
        "--rehearsal", type=int, default=10, help="stored old images per class"
    )
    args = parser.parse_args()
    dataset = args.dataset or (
        "fashion" if os.path.isdir(kt.datasets.FASHION_MNIST_DIR) else "digits"
    )
    if dataset == "digits":
        args.per_class = min(args.per_class, 50)
        args.test_per_class = min(args.test_per_class, 120)
    keras.utils.set_random_seed(args.seed)
    start = time.time()
    (x, y), (x_test, y_test), names = load(
        dataset, args.size, args.per_class, args.test_per_class, args.seed
    )
    old, new = y < OLD, y >= OLD
    print(
        f"{dataset}: {old.sum()} training images of classes 0-{OLD - 1}, then "
        f"{new.sum()} of {OLD}-9 only; {len(y_test)} test images"
    )

    # 1. The first task: a new head on the frozen EfficientNet-Lite0.
    model = kt.TransferModel(
        num_classes=OLD,
        class_names=names[:OLD],
        input_shape=(args.size, args.size, 1),
        seed=args.seed,
    )
    model.compile()
    model.fit(x[old], y[old], epochs=args.epochs, batch_size=32, verbose=0)
    before = accuracies(model, x_test[y_test < OLD], y_test[y_test < OLD])
    print(f"first task: old-class accuracy {before['old classes']:.3f}", flush=True)

    # 2. New classes, trained on their images only (or with a few stored
    # images of each old class: rehearsal), every layer fine-tuning, plainly
    # and with LwF.
    kept = np.concatenate(
        [np.flatnonzero(y == c)[: args.rehearsal] for c in range(OLD)]
    )
    rows = {}
    for label, lwf, rehearse in (
        ("plain fine-tuning", None, False),
        ("Learning without Forgetting", True, False),
        (f"plain + {args.rehearsal} old images per class", None, True),
        (f"LwF + {args.rehearsal} old images per class", True, True),
    ):
        wide = model.widen(names[OLD:], seed=args.seed)
        wide.unfreeze()
        wide.compile()
        keras.utils.set_random_seed(args.seed)
        train = np.concatenate([np.flatnonzero(new), kept]) if rehearse else new
        wide.fit(
            x[train],
            y[train],
            epochs=args.new_epochs,
            batch_size=32,
            verbose=0,
            lwf=lwf,
        )
        rows[label] = accuracies(wide, x_test, y_test)
        print(f"{label}: {rows[label]}", flush=True)

    print(
        f"\n| adding classes {OLD}-9 to a 7-class model "
        "| old classes | new classes | old among old |"
    )
    print("|---|---|---|---|")
    print(
        f"| before (7 classes) | {before['old classes']:.3f} | - | "
        f"{before['old among old']:.3f} |"
    )
    for label, row in rows.items():
        print(
            f"| {label} | {row['old classes']:.3f} | {row['new classes']:.3f} | "
            f"{row['old among old']:.3f} |"
        )
    print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
