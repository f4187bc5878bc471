"""What unfreezing during `fit` costs, against plain Keras, on a real backbone.

EfficientNet-Lite0 (ImageNet weights, offline) at 96x96, batch 32, CPU.

1. Frozen-phase train step: a `TransferModel` compiled for gradual unfreezing
   (one optimizer per layer group, built for every weight), its backbone
   frozen, against the plain Keras recipe: the same network with
   `base.trainable = False` under a pooling + dropout + Dense head, Adam.
   Steps are timed in alternating blocks on one batch; medians are compared.
2. A whole run of three stages (head only, then the top group, then the top
   two, one epoch each) on scikit-learn's digits upsampled to 96 px: one
   `fit` with `GradualUnfreeze(every=1)` against the same stages done by hand
   (`fit`, `unfreeze(top_groups=n)`, which recompiles, `fit` again, ...). Both
   include tracing; the number of traces of the train step is printed.

Prints ratios (lower is better for the left-hand side); never asserts.

Run: python benchmarks/unfreeze_speed.py [--images 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

SIZE, BATCH, CLASSES = 96, 32, 10


def plain_keras_model() -> keras.Model:
    """The Keras transfer-learning guide's recipe, on the same backbone."""
    base = kt.efficientnet_lite(0, include_top=False, input_shape=(SIZE, SIZE, 3))
    base.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127 / 128.0)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def transfer_model(**compile_kwargs) -> kt.TransferModel:
    model = kt.TransferModel(num_classes=CLASSES, input_shape=(SIZE, SIZE, 3), seed=0)
    model.compile(**compile_kwargs)
    return model


def frozen_step_times(models: dict, steps: int, blocks: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, BATCH)
    for model in models.values():  # trace and warm up
        for _ in range(3):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    names = list(models)
    for block in range(blocks):
        # Rotate the order, so that no model always runs first in a block.
        for name in names[block % len(names) :] + names[: block % len(names)]:
            model = models[name]
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def count_traces(model) -> list:
    traces = []
    step = model.train_step

    def counting_step(data):
        traces.append(1)
        return step(data)

    model.train_step = counting_step
    return traces


def run_gradual(x, y, epochs: int) -> tuple[float, int]:
    model = kt.TransferModel(num_classes=CLASSES, input_shape=x.shape[1:], seed=0)
    model.compile()
    traces = count_traces(model)
    start = time.perf_counter()
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=BATCH,
        verbose=0,
        callbacks=[kt.GradualUnfreeze(every=1)],
    )
    return time.perf_counter() - start, len(traces)


def run_by_hand(x, y, epochs: int) -> tuple[float, int]:
    model = kt.TransferModel(num_classes=CLASSES, input_shape=x.shape[1:], seed=0)
    model.compile()
    traces = count_traces(model)
    start = time.perf_counter()
    for epoch in range(epochs):
        if epoch:
            model.unfreeze(top_groups=epoch)  # recompiles: a fresh optimizer
        model.fit(
            x,
            y,
            initial_epoch=epoch,
            epochs=epoch + 1,
            batch_size=BATCH,
            verbose=0,
        )
    return time.perf_counter() - start, len(traces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=9)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)

    models = {
        "plain Keras, base.trainable=False": plain_keras_model(),
        "TransferModel, compile()": transfer_model(),
        # What GradualUnfreeze and fine_tune train with.
        "TransferModel, compile(layer_decay=0.75)": transfer_model(layer_decay=0.75),
    }
    steps = frozen_step_times(models, args.steps, args.blocks)
    plain = steps["plain Keras, base.trainable=False"]
    print("1. frozen-phase train step, EfficientNet-Lite0, 96 px, batch 32")
    print(f"   (median of {args.blocks} blocks of {args.steps} steps)")
    for name, seconds in steps.items():
        print(f"   {name:42s} {seconds * 1000:6.1f} ms  ratio {seconds / plain:.3f}")

    (x, y), _ = kt.datasets.load_digits(per_class=args.images // CLASSES)
    x = keras.ops.convert_to_numpy(keras.layers.Resizing(SIZE, SIZE)(x))
    results = {"gradual": [], "by_hand": []}
    for _ in range(args.repeats):  # alternate, so drifts in load hit both
        results["gradual"].append(run_gradual(x, y, 3))
        results["by_hand"].append(run_by_hand(x, y, 3))
    gradual = statistics.median(t for t, _ in results["gradual"])
    by_hand = statistics.median(t for t, _ in results["by_hand"])
    print(
        f"\n2. three stages, one epoch each, {len(x)} images (median of {args.repeats})"
    )
    print(
        f"   one fit + GradualUnfreeze: {gradual:.1f} s, "
        f"{results['gradual'][0][1]} traces of the train step"
    )
    print(
        f"   by hand, recompiling:      {by_hand:.1f} s, "
        f"{results['by_hand'][0][1]} traces of the train step"
    )
    print(f"   ratio gradual / by hand: {gradual / by_hand:.3f}")


if __name__ == "__main__":
    main()
