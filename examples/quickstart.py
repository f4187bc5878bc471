"""Transfer learning end to end, offline, in about a minute on a laptop CPU.

Real data bundled with scikit-learn (8x8 handwritten digits):
  1. pre-training: a small CNN learns digits 0-4 from ~900 images (the big task);
  2. transfer: its classifier is popped and a new head learns digits 5-9 from
     only 10 labelled images per class (the small task);
  3. the same CNN trained from scratch on those 50 images is the baseline.

Run: python examples/quickstart.py [--out runs/quickstart] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_transfer as kt  # noqa: E402

PER_CLASS = 10  # labelled examples per new class


def small_cnn(num_classes: int) -> keras.Model:
    """A small CNN that takes raw 0-255 grey 8x8 images."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(128, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_0_4_cnn")


def load_tasks(seed: int, per_class: int = PER_CLASS):
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype("float32")[..., None]
    labels = digits.target
    source = labels < 5
    rng = np.random.default_rng(seed)
    target_idx = np.flatnonzero(~source)
    train_idx = np.concatenate(
        [
            rng.choice(target_idx[labels[target_idx] == c], per_class, replace=False)
            for c in range(5, 10)
        ]
    )
    test_idx = np.setdiff1d(target_idx, train_idx)
    return (
        (images[source], labels[source]),
        (images[train_idx], labels[train_idx] - 5),
        (images[test_idx], labels[test_idx] - 5),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    (x_src, y_src), (x_train, y_train), (x_test, y_test) = load_tasks(
        args.seed, args.per_class
    )
    print(
        f"source task: {len(x_src)} images of digits 0-4 | target task: digits 5-9, "
        f"{len(x_train)} training and {len(x_test)} test images"
    )
    started = time.perf_counter()

    # 1. Pre-training on the big task, saved like any pretrained network.
    source = small_cnn(5)
    source.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    source.fit(x_src, y_src, epochs=20, batch_size=32, verbose=0)
    source_path = os.path.join(args.out, "digits_0_4.keras")
    source.save(source_path)

    # 2. Transfer: pop the top, new head, rule of thumb for what to train.
    decision = kt.choose_strategy(y_train)
    print(f"strategy -> {decision}")
    model = kt.TransferModel(source_path, num_classes=5, dropout=0.2, seed=args.seed)
    model.compile()
    model.fit(x_train, y_train, epochs=80, batch_size=8, verbose=0)
    head_only = model.evaluate(x_test, y_test, verbose=0)[1]

    # Phase 2, for comparison: fine-tune everything at a lower learning rate.
    model.unfreeze()
    model.compile(learning_rate=1e-4)
    model.fit(x_train, y_train, epochs=30, batch_size=8, verbose=0)
    fine_tuned = model.evaluate(x_test, y_test, verbose=0)[1]
    model.save(os.path.join(args.out, "digits_5_9_transfer.keras"))

    # 3. Baseline: the same network trained from scratch on the 50 images.
    scratch = small_cnn(5)
    scratch.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    scratch.fit(x_train, y_train, epochs=110, batch_size=8, verbose=0)
    from_scratch = scratch.evaluate(x_test, y_test, verbose=0)[1]

    print(f"\ntest accuracy on digits 5-9 ({args.per_class} training images per class)")
    print("| recipe | accuracy |\n|---|---|")
    print(f"| from scratch (same CNN, 110 epochs) | {from_scratch:.3f} |")
    print(f"| transfer: new head on frozen backbone (80 epochs) | {head_only:.3f} |")
    print(f"| transfer: + fine-tune all layers (30 epochs) | {fine_tuned:.3f} |")
    print(f"\n{time.perf_counter() - started:.0f} s; models saved in {args.out}/")


if __name__ == "__main__":
    main()
