"""`keras-transfer demo`: does transfer help with little data? Measured, offline.

A small target task from real images that need no download (Fashion-MNIST from
Debian's `dataset-fashion-mnist` when installed, else scikit-learn's digits):
10 labelled training images per class and a held-out test set. The same
network, EfficientNet-Lite0, is trained three ways:
  (a) from scratch (random weights, every layer, BatchNorm training, its
      statistics re-estimated on the training images at the end);
  (b) ImageNet-pretrained, only a new head on the frozen backbone;
  (c) the same, then every layer fine-tuned (BatchNorm statistics kept).
"""

from __future__ import annotations

import os
import time

import numpy as np

RECIPES = (
    "from scratch (same network, random weights)",
    "transfer: new head on the frozen pretrained backbone",
    "transfer: then fine-tune every layer",
)


def load_task(dataset: str | None, per_class: int, test_size: int, seed: int):
    """((x, y), (x_test, y_test), class_names, dataset name), images 0-255 grey."""
    from keras_transfer import datasets

    if dataset is None:
        dataset = "fashion" if os.path.isdir(datasets.FASHION_MNIST_DIR) else "digits"
    if dataset == "fashion":
        (x, y), (x_test, y_test) = datasets.load_fashion_mnist()
        train, _ = datasets.few_shot_split(y, per_class, seed)
        rng = np.random.default_rng(seed)
        test = np.sort(rng.permutation(len(y_test))[:test_size])
        names = list(datasets.FASHION_MNIST_CLASSES)
        return (x[train], y[train]), (x_test[test], y_test[test]), names, dataset
    (x, y), (x_test, y_test) = datasets.load_digits(per_class, seed)
    return (
        (x, y),
        (x_test[:test_size], y_test[:test_size]),
        [str(d) for d in range(10)],
        "digits",
    )


def reestimate_batchnorm(model, images) -> None:
    """Sets every BatchNorm layer's moving statistics to those of `images`.

    A network trained from scratch for a few hundred steps has moving averages
    that lag far behind its weights (momentum 0.99), so in inference it can
    fall to chance while it fits its training images: one pass over the
    training images in training mode, with momentum 0, fixes that (as
    `torch.optim.swa_utils.update_bn` does), for a fair baseline.
    """
    import keras

    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in layers]
    try:
        # Chunk i weighs 1 / (i + 1): the mean of the chunks' statistics.
        for i, start in enumerate(range(0, len(images), 256)):
            for layer in layers:
                layer.momentum = i / (i + 1)
            model(images[start : start + 256], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


def run_demo(args) -> int:
    import keras

    import keras_transfer as kt
    from keras_transfer import report
    from keras_transfer.data import make_dataset, resize_images

    start = time.time()
    keras.utils.set_random_seed(args.seed)
    (x, y), (x_test, y_test), names, dataset = load_task(
        args.dataset, args.per_class, args.test_size, args.seed
    )
    size = args.image_size
    x, x_test = resize_images(x, size), resize_images(x_test, size)
    print(
        f"{dataset}: {len(y)} training images ({args.per_class} per class), "
        f"{len(y_test)} held-out test images, {size}x{size} grey",
        flush=True,
    )
    test = make_dataset(x_test, batch_size=64)

    def accuracy(model):
        return float((model.predict(test, verbose=0).argmax(1) == y_test).mean())

    def build(weights, batchnorm="frozen"):
        keras.utils.set_random_seed(args.seed)
        return kt.TransferModel(
            num_classes=len(names),
            class_names=names,
            input_shape=(size, size, 1),
            weights=weights,
            batchnorm=batchnorm,
            seed=args.seed,
        )

    results, histories, times = {}, {}, {}
    # (a) from scratch: every layer, BatchNorm learning its statistics.
    began = time.time()
    scratch = build(None, batchnorm="trainable")
    scratch.unfreeze()
    scratch.compile(learning_rate=1e-3)
    history = scratch.fit(x, y, epochs=args.scratch_epochs, batch_size=32, verbose=0)
    reestimate_batchnorm(scratch, x)
    results[RECIPES[0]], histories["from scratch"] = accuracy(scratch), history.history
    times[RECIPES[0]] = time.time() - began
    print(f"{RECIPES[0]}: {results[RECIPES[0]]:.3f}", flush=True)

    # (b) head only on the frozen pretrained backbone.
    began = time.time()
    model = build("imagenet")
    model.compile()
    history = model.fit(x, y, epochs=args.head_epochs, batch_size=32, verbose=0)
    results[RECIPES[1]], histories["head only"] = accuracy(model), history.history
    times[RECIPES[1]] = time.time() - began
    print(f"{RECIPES[1]}: {results[RECIPES[1]]:.3f}", flush=True)

    # (c) then every layer, at the lower "auto" rate.
    began = time.time()
    model.unfreeze()
    history = model.fit(x, y, epochs=args.fine_tune_epochs, batch_size=32, verbose=0)
    results[RECIPES[2]], histories["fine-tune"] = accuracy(model), history.history
    times[RECIPES[2]] = time.time() - began
    print(f"{RECIPES[2]}: {results[RECIPES[2]]:.3f}", flush=True)

    out = args.out
    os.makedirs(out, exist_ok=True)
    model.save(os.path.join(out, "model.keras"))
    report.write_history(
        {
            f"{label} {key}": values
            for label, h in histories.items()
            for key, values in h.items()
        },
        out,
    )
    report.plot_history(histories, os.path.join(out, "training_curves.png"))
    predicted = model.predict(test, verbose=0).argmax(1)
    matrix = report.confusion_matrix(y_test, predicted, len(names))
    report.plot_confusion(
        matrix,
        names,
        os.path.join(out, "confusion_matrix.png"),
        "test images, pretrained + fine-tuned",
    )
    epochs = {
        RECIPES[0]: args.scratch_epochs,
        RECIPES[1]: args.head_epochs,
        RECIPES[2]: args.fine_tune_epochs,
    }
    rows = [
        [recipe, f"{results[recipe]:.3f}", epochs[recipe], f"{times[recipe]:.0f} s"]
        for recipe in RECIPES
    ]
    table = report.table(
        [
            f"recipe ({dataset}, {len(y)} training images, {len(y_test)} test)",
            "test accuracy",
            "epochs",
            "time",
        ],
        rows,
    )
    elapsed = time.time() - start
    report.write_markdown(
        os.path.join(out, "report.md"),
        "keras-transfer demo: transfer learning with 10 images per class",
        [
            (
                "Task",
                f"{dataset}: {len(y)} labelled training images "
                f"({args.per_class} per class), {len(y_test)} held-out test images, "
                f"resized to {size}x{size}; EfficientNet-Lite0; seed {args.seed}.",
            ),
            ("Result", table),
            ("Training curves", "![training curves](training_curves.png)"),
            (
                "Confusion matrix (pretrained + fine-tuned)",
                "![confusion matrix](confusion_matrix.png)",
            ),
        ],
    )
    print("\n" + table)
    print(f"\n{elapsed:.0f} s; report in {os.path.join(out, 'report.md')}")
    return 0
