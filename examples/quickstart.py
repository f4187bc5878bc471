"""Transfer learning end to end, offline, in about two minutes on a laptop CPU.

The default backbone, EfficientNet-Lite0 with ImageNet weights (shipped with
the package, nothing to download), learns scikit-learn's bundled handwritten
digits from only 10 labelled images per class:
  1. head only: a new classifier on the frozen pretrained features;
  2. fine-tuning: then every layer, BatchNorm statistics kept;
  3. baseline: a small CNN trained from scratch on the same 100 images.
The table compares them on the ~1,700 held-out digits.

Run: python examples/quickstart.py [--out runs/quickstart] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

PER_CLASS = 10  # labelled training images per class
SIZE = 96  # the 8x8 digits are upsampled to this size for the backbone


def small_cnn(num_classes: int) -> keras.Model:
    """A small CNN for raw 0-255 grey 8x8 images: the from-scratch baseline."""
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
    return keras.Model(inputs, outputs, name="digits_cnn")


def upsample(images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.layers.Resizing(SIZE, SIZE)(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = kt.datasets.load_digits(
        args.per_class, args.seed
    )
    print(
        f"digits 0-9: {len(x_train)} training images ({args.per_class} per class), "
        f"{len(x_test)} test images"
    )
    started = time.perf_counter()

    # The four-line workflow: pretrained backbone, new head, fit, fine-tune.
    decision = kt.choose_strategy(y_train)
    print(f"strategy -> {decision}")
    model = kt.TransferModel(
        num_classes=10, input_shape=(SIZE, SIZE, 1), seed=args.seed
    )
    model.compile()  # Adam 1e-3 while the backbone is frozen
    model.fit(upsample(x_train), y_train, epochs=40, batch_size=32, verbose=0)
    head_only = model.evaluate(upsample(x_test), y_test, verbose=0)[1]

    # Phase 2, for comparison: fine-tune everything (recompiled at 1e-4).
    model.unfreeze()
    model.fit(upsample(x_train), y_train, epochs=20, batch_size=32, verbose=0)
    fine_tuned = model.evaluate(upsample(x_test), y_test, verbose=0)[1]
    model.save(os.path.join(args.out, "digits_transfer.keras"))

    # Baseline: a small CNN trained from scratch on the same 100 images.
    scratch = small_cnn(10)
    scratch.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    scratch.fit(x_train, y_train, epochs=110, batch_size=8, verbose=0)
    from_scratch = scratch.evaluate(x_test, y_test, verbose=0)[1]

    print(f"\ntest accuracy on digits 0-9 ({args.per_class} training images per class)")
    print("| recipe | accuracy |\n|---|---|")
    print(f"| from scratch (small CNN at 8x8, 110 epochs) | {from_scratch:.3f} |")
    print(f"| transfer: new head on frozen EfficientNet-Lite0 | {head_only:.3f} |")
    print(f"| transfer: + fine-tune all layers | {fine_tuned:.3f} |")
    print(f"\n{time.perf_counter() - started:.0f} s; model saved in {args.out}/")


if __name__ == "__main__":
    main()
