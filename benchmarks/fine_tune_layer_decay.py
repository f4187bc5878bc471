"""Which `layer_decay` should `fine_tune` use by default? Test accuracy, measured.

`TransferModel(...).fine_tune(x, y, freeze_epochs=40, epochs=20, layer_decay=d)`
on EfficientNet-Lite0 (ImageNet weights, offline), 10 labelled images per
class, images upsampled to 96x96, for several `d` (None: one rate for all):
  - scikit-learn's digits (test: the 1,697 other digits), seed 0;
  - Fashion-MNIST, when Debian's `dataset-fashion-mnist` is installed (test:
    the first 2,000 t10k images), seeds 0 and 1.

Run: python benchmarks/fine_tune_layer_decay.py [--decays none,0.9,0.75,0.5]
"""

from __future__ import annotations

import argparse
import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
SIZE = 96


def upsample(images):
    return keras.ops.convert_to_numpy(keras.layers.Resizing(SIZE, SIZE)(images))


def fashion_mnist(seed: int):
    def read(kind):
        with gzip.open(f"{FASHION}/{kind}-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
        with gzip.open(f"{FASHION}/{kind}-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return x.astype("float32"), y.astype("int64")

    (x, y), (x_test, y_test) = read("train"), read("t10k")
    train, _ = kt.datasets.few_shot_split(y, 10, seed)
    return (x[train], y[train]), (x_test[:2000], y_test[:2000])


def accuracy(data, decay, seed: int, tune_epochs: int) -> float:
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = kt.TransferModel(num_classes=10, input_shape=(SIZE, SIZE, 1), seed=seed)
    model.fine_tune(
        upsample(x),
        y,
        freeze_epochs=40,
        epochs=tune_epochs,
        layer_decay=decay,
        batch_size=32,
        verbose=0,
    )
    return model.evaluate(upsample(x_test), y_test, verbose=0)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decays", default="none,0.9,0.75,0.5")
    parser.add_argument("--tune-epochs", type=int, default=20)
    args = parser.parse_args()
    decays = [None if d == "none" else float(d) for d in args.decays.split(",")]
    tasks = [("digits, seed 0", kt.datasets.load_digits(10, 0), 0)]
    if os.path.isdir(FASHION):
        tasks += [(f"Fashion-MNIST, seed {s}", fashion_mnist(s), s) for s in (0, 1)]
    else:
        print(f"({FASHION} not found: apt-get install dataset-fashion-mnist)")
    print("| layer_decay | " + " | ".join(name for name, _, _ in tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    for decay in decays:
        scores = [accuracy(data, decay, s, args.tune_epochs) for _, data, s in tasks]
        print(
            f"| {decay} | " + " | ".join(f"{a:.3f}" for a in scores) + " |", flush=True
        )


if __name__ == "__main__":
    main()
