"""The `keras-transfer` command: fit, predict, evaluate, export, backbones, demo.

    keras-transfer fit data/xrays --epochs 10 --out runs/xray1
    keras-transfer predict runs/xray1 scans/*.png [--json]
    keras-transfer evaluate runs/xray1 data/xrays_test
    keras-transfer export runs/xray1 models/xray
    keras-transfer backbones
    keras-transfer demo

Bad arguments print the usage and the reason and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transfer.backbones.weights import WeightsUnavailableError  # noqa: E402
from keras_transfer.backbones.zoo.torch_checkpoint import (  # noqa: E402
    UnsafeCheckpointError,
)

MODEL_FILE = "model.keras"
STRATEGIES = ("auto", "head_only", "fine_tune", "gradual")


class UsageError(Exception):
    """A bad argument found after parsing: usage, reason, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1), got {text!r}"
        ) from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-transfer",
        description="Transfer learning from pretrained image networks, offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser(
        "fit", help="fine-tune a pretrained backbone on a folder of labelled images"
    )
    fit.add_argument("data", help="folder with one subfolder of images per class")
    fit.add_argument("--out", required=True, help="run folder for the artefacts")
    fit.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="backbone name (see `backbones`) or a .keras model file",
    )
    fit.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet', 'none' or a local weights file",
    )
    fit.add_argument("--epochs", type=_positive_int, default=10)
    fit.add_argument(
        "--freeze-epochs",
        type=int,
        default=1,
        help="head-only epochs before fine-tuning (fine_tune)",
    )
    fit.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="auto: head only with < 100 images in the rarest class, else fine-tune",
    )
    fit.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="resize images to this size (default: the backbone's)",
    )
    fit.add_argument(
        "--grayscale",
        action="store_true",
        help="read images as one channel (repeated to RGB inside)",
    )
    fit.add_argument(
        "--validation",
        default=None,
        help="folder of validation images (same class subfolders)",
    )
    fit.add_argument(
        "--validation-split",
        type=_fraction,
        default=0.2,
        help="share held out for validation when no folder is given",
    )
    fit.add_argument("--batch-size", type=_positive_int, default=32)
    fit.add_argument("--learning-rate", type=float, default=None)
    fit.add_argument("--seed", type=int, default=None, help="makes runs repeatable")
    fit.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    fit.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in an --out folder that holds one",
    )

    predict = commands.add_parser("predict", help="classify image files")
    predict.add_argument("run", help="run folder written by `fit` (or a .keras file)")
    predict.add_argument("files", nargs="+", help="image files")
    predict.add_argument("--top", type=_positive_int, default=1)
    predict.add_argument("--json", action="store_true", help="print JSON")

    evaluate = commands.add_parser("evaluate", help="accuracy on a labelled folder")
    evaluate.add_argument("run", help="run folder written by `fit` (or a .keras file)")
    evaluate.add_argument("data", help="folder with one subfolder per class")
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser("export", help="export for TensorFlow Serving")
    export.add_argument("run", help="run folder written by `fit` (or a .keras file)")
    export.add_argument("models", help="TF Serving base folder (versions inside)")
    export.add_argument("--version", type=_positive_int, default=None)
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--top-k", type=_positive_int, default=5)

    backbones = commands.add_parser("backbones", help="list the backbones")
    backbones.add_argument(
        "--params",
        action="store_true",
        help="build each network to count its parameters (slow)",
    )

    demo = commands.add_parser(
        "demo", help="offline demo: transfer vs. from scratch with 10 images per class"
    )
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument(
        "--dataset",
        choices=("fashion", "digits"),
        default=None,
        help="default: Fashion-MNIST when installed, else digits",
    )
    demo.add_argument("--per-class", type=_positive_int, default=10)
    demo.add_argument("--test-size", type=_positive_int, default=2000)
    demo.add_argument("--image-size", type=_positive_int, default=96)
    demo.add_argument("--head-epochs", type=_positive_int, default=40)
    demo.add_argument("--fine-tune-epochs", type=_positive_int, default=20)
    demo.add_argument("--scratch-epochs", type=_positive_int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with the usage on bad syntax
    try:
        if args.command == "fit":
            return _fit(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "backbones":
            return _backbones(args)
        from keras_transfer.demo import run_demo

        return run_demo(args)
    except UsageError as error:
        parser.error(str(error))  # exits 2
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        WeightsUnavailableError,
        UnsafeCheckpointError,
    ) as error:
        print(f"keras-transfer {args.command}: error: {error}", file=sys.stderr)
        return 1


# --- fit ----------------------------------------------------------------------


def _default_size(backbone: str) -> int:
    from keras_transfer.backbones.registry import get_spec

    if os.path.isfile(backbone):
        import keras

        shape = keras.saving.load_model(backbone, compile=False).inputs[0].shape
        if shape[1] is None:
            raise UsageError(
                f"--image-size is needed: {backbone} accepts any image size"
            )
        return int(shape[1])
    try:
        return get_spec(backbone).native_size
    except ValueError as error:
        raise UsageError(str(error)) from error


def _fit(args) -> int:
    if args.freeze_epochs < 0:
        raise UsageError(f"--freeze-epochs must be >= 0, got {args.freeze_epochs}")
    if args.validation is not None and not os.path.isdir(args.validation):
        raise UsageError(f"--validation folder not found: {args.validation!r}")
    if not os.path.isdir(args.data):
        raise UsageError(f"data folder not found: {args.data!r}")
    previous = os.path.join(args.out, MODEL_FILE)
    if os.path.exists(previous) and not args.overwrite:
        raise UsageError(
            f"{args.out!r} already holds a run ({previous}); pass --overwrite to "
            "replace it, or another --out folder"
        )
    size = args.image_size or _default_size(args.backbone)
    channels = 1 if args.grayscale else 3

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_transfer as kt
    from keras_transfer import report
    from keras_transfer.data import load_image_folder, make_dataset

    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
        tf.config.experimental.enable_op_determinism()
    start = time.time()
    data = load_image_folder(args.data, size, channels=channels)
    _print_skipped(data.skipped)
    if args.validation:
        train = data
        validation = load_image_folder(
            args.validation, size, channels=channels, class_names=data.class_names
        )
        _print_skipped(validation.skipped)
        skipped = data.skipped + validation.skipped
    elif args.validation_split:
        train, validation = data.split(args.validation_split, seed=args.seed or 0)
        skipped = data.skipped
    else:
        train, validation, skipped = data, None, data.skipped
    print(
        f"{len(train.labels)} training images in {len(data.class_names)} classes "
        f"{data.class_names}"
        + (f", {len(validation.labels)} for validation" if validation else "")
        + f", {size}x{size}x{channels}"
    )

    model = kt.TransferModel(
        args.backbone,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        input_shape=(size, size, channels),
        weights=None if args.weights.lower() == "none" else args.weights,
        seed=args.seed,
    )
    strategy = args.strategy
    if strategy == "auto":
        decision = kt.choose_strategy(train.labels)
        strategy = decision.strategy
        print(f"strategy: {strategy} ({decision.reason})")
    else:
        print(f"strategy: {strategy} (chosen)")
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, MODEL_FILE)
    if os.path.exists(model_path):  # --overwrite: never report the old model
        os.remove(model_path)
    # The lowest loss picks the best epoch (accuracy on a small validation set
    # ties early, at a model that has barely trained).
    monitor = "val_accuracy" if validation else "accuracy"
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            model_path,
            monitor="val_loss" if validation else "loss",
            mode="min",
            save_best_only=True,
        ),
    ]
    train_data = make_dataset(
        train.images,
        train.labels,
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
    )
    fit_kwargs = dict(
        validation_data=(
            make_dataset(
                validation.images, validation.labels, batch_size=args.batch_size
            )
            if validation
            else None
        ),
        verbose=args.verbose,
    )
    model.compile(learning_rate=args.learning_rate)
    interrupted = False
    try:
        if strategy == "fine_tune":
            model.fine_tune(
                train_data,
                epochs=args.epochs,
                freeze_epochs=args.freeze_epochs,
                callbacks=callbacks,
                **fit_kwargs,
            )
        else:
            if strategy == "gradual":
                callbacks.append(kt.GradualUnfreeze(every=max(1, args.epochs // 5)))
            model.fit(train_data, epochs=args.epochs, callbacks=callbacks, **fit_kwargs)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: keeping the best model so far", file=sys.stderr)
    elapsed = time.time() - start

    # Keras' History callback sets `model.history` after every epoch, so an
    # interrupted run keeps the epochs it finished.
    logs = getattr(getattr(model, "history", None), "history", {})
    history = {key: [float(v) for v in values] for key, values in logs.items()}
    report.write_history(history, args.out)
    with open(os.path.join(args.out, "class_names.json"), "w") as handle:
        json.dump(data.class_names, handle)
    if not os.path.exists(model_path):
        print("no epoch finished: no model was saved", file=sys.stderr)
        return 130
    best = keras.saving.load_model(model_path)
    planned = args.epochs + (args.freeze_epochs if strategy == "fine_tune" else 0)
    report.plot_history(
        {"model": history}, os.path.join(args.out, "training_curves.png")
    )
    sections = [
        (
            "Run",
            report.table(
                ["", ""],
                [
                    [
                        "data",
                        f"`{args.data}`: {len(train.labels)} training images, "
                        f"{len(data.class_names)} classes",
                    ],
                    ["backbone", f"`{args.backbone}` (weights: {args.weights})"],
                    ["image size", f"{size}x{size}x{channels}"],
                    ["strategy", strategy],
                    [
                        "epochs",
                        f"{len(history.get('loss', []))} of {planned}"
                        + (" (interrupted)" if interrupted else ""),
                    ],
                    ["time", f"{elapsed:.0f} s"],
                    ["seed", args.seed],
                ],
            ),
        ),
    ]
    best_value = max(history.get(monitor, [float("nan")]))
    summary = f"best {monitor.replace('_', ' ')} {best_value:.3f}"
    if validation is not None:
        predicted = best.predict(
            make_dataset(validation.images, batch_size=args.batch_size), verbose=0
        ).argmax(axis=1)
        matrix = report.confusion_matrix(
            validation.labels, predicted, len(data.class_names)
        )
        report.plot_confusion(
            matrix,
            data.class_names,
            os.path.join(args.out, "confusion_matrix.png"),
            "validation images, best model",
        )
        accuracy = float((predicted == validation.labels).mean())
        per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
        sections.append(
            (
                "Validation (best model)",
                f"Accuracy {accuracy:.3f} on {len(validation.labels)} images.\n\n"
                + report.table(
                    ["class", "images", "accuracy"],
                    [
                        [name, int(matrix[i].sum()), f"{per_class[i]:.3f}"]
                        for i, name in enumerate(data.class_names)
                    ],
                )
                + "\n\n![confusion matrix](confusion_matrix.png)",
            )
        )
    sections.append(("Training curves", "![training curves](training_curves.png)"))
    sections.append(("Skipped files", _skipped_text(skipped)))
    report.write_markdown(
        os.path.join(args.out, "report.md"),
        f"keras-transfer fit: {args.data}",
        sections,
    )
    print(
        f"done: strategy {strategy}, {len(history.get('loss', []))} epochs, "
        f"{summary}, {elapsed:.0f} s; skipped {len(skipped)} file(s); "
        f"artefacts in {args.out}"
    )
    return 130 if interrupted else 0


def _print_skipped(skipped) -> None:
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)


def _skipped_text(skipped) -> str:
    if not skipped:
        return "None: every image file was read."
    return (
        f"{len(skipped)} file(s) could not be read and were left out:\n\n"
        + "\n".join(f"- `{path}`: {reason}" for path, reason in skipped)
    )


# --- predict, evaluate, export ----------------------------------------------


def _load_run(run: str):
    import keras

    path = run if run.endswith(".keras") else os.path.join(run, MODEL_FILE)
    if not os.path.isfile(path):
        raise UsageError(
            f"no model at {path!r}: pass a run folder written by `keras-transfer "
            "fit` or a .keras file"
        )
    model = keras.saving.load_model(path)
    shape = model.inputs[0].shape
    if len(shape) != 4 or None in shape[1:]:
        raise UsageError(
            f"{path} takes inputs of shape {tuple(shape)}; the command needs a "
            "model of fixed-size images (batch, height, width, channels)"
        )
    return model, (int(shape[1]), int(shape[2])), int(shape[3])


def _predict(args) -> int:
    import numpy as np

    from keras_transfer.data import make_dataset, read_image

    model, size, channels = _load_run(args.run)
    names = list(
        getattr(model, "class_names", None) or range(model.outputs[0].shape[-1])
    )
    images, files = [], []
    for path in args.files:
        try:
            images.append(read_image(path, size, channels))
            files.append(path)
        except ValueError as error:
            print(f"skipped {path}: {error}", file=sys.stderr)
    if not images:
        print("keras-transfer predict: error: no readable image", file=sys.stderr)
        return 1
    probabilities = model.predict(make_dataset(np.stack(images)), verbose=0)
    results = []
    for path, row in zip(files, probabilities, strict=True):
        order = np.argsort(-row)[: args.top]
        results.append(
            {
                "file": path,
                "class": str(names[order[0]]),
                "probability": float(row[order[0]]),
                "top": [[str(names[i]), float(row[i])] for i in order],
            }
        )
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for item in results:
            tops = ", ".join(f"{n} {p:.3f}" for n, p in item["top"][1:])
            print(
                f"{item['file']}\t{item['class']}\t{item['probability']:.3f}"
                + (f"\t({tops})" if tops else "")
            )
    return 0


def _evaluate(args) -> int:
    from keras_transfer import report
    from keras_transfer.data import load_image_folder, make_dataset

    model, size, channels = _load_run(args.run)
    names = getattr(model, "class_names", None)
    data = load_image_folder(args.data, size, channels=channels, class_names=names)
    outputs = int(model.outputs[0].shape[-1])
    if outputs != len(data.class_names):
        raise UsageError(
            f"the model has {outputs} outputs but {args.data!r} has "
            f"{len(data.class_names)} class folders; evaluate a model trained on "
            "these classes"
        )
    _print_skipped(data.skipped)
    probabilities = model.predict(make_dataset(data.images), verbose=0)
    predicted = probabilities.argmax(axis=1)
    matrix = report.confusion_matrix(data.labels, predicted, len(data.class_names))
    result = {
        "accuracy": float((predicted == data.labels).mean()),
        "images": int(len(data.labels)),
        "per_class_accuracy": {
            name: float(matrix[i, i] / max(matrix[i].sum(), 1))
            for i, name in enumerate(data.class_names)
        },
        "confusion_matrix": matrix.tolist(),
        "skipped": [path for path, _ in data.skipped],
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"accuracy {result['accuracy']:.3f} on {result['images']} images")
        for name, value in result["per_class_accuracy"].items():
            print(f"  {name}: {value:.3f}")
        if data.skipped:
            print(f"skipped {len(data.skipped)} unreadable file(s)")
    return 0


def _export(args) -> int:
    from keras_transfer.serving import export_for_serving

    model, _, _ = _load_run(args.run)
    path = export_for_serving(
        model,
        args.models,
        version=args.version,
        overwrite=args.overwrite,
        top_k=args.top_k,
    )
    print(f"exported to {path}")
    return 0


# --- backbones ----------------------------------------------------------------


def _backbones(args) -> int:
    from keras_transfer.backbones.registry import get_spec, list_backbones

    rows = []
    for name in list_backbones():
        spec = get_spec(name)
        if name == "efficientnet_lite0":
            offline = "packaged"
        elif name.startswith("efficientnet_lite"):
            offline = "local file only"
        else:
            offline = "download (then cached)"
        params = ""
        if args.params:
            import keras

            size = spec.native_size
            model = spec.build((size, size, 3), None)
            params = f"{model.count_params() / 1e6:.1f} M"
            del model
            keras.backend.clear_session()
        rows.append((name, f"{spec.native_size}", params, offline))
    header = ("name", "input size", "params" if args.params else "", "ImageNet weights")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
