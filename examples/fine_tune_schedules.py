"""Fine-tuning schedules during `fit`, offline, in a few minutes on a laptop CPU.

The default backbone, EfficientNet-Lite0 with its ImageNet weights, learns
scikit-learn's bundled handwritten digits (upsampled to 96x96) from 10
labelled images per class, with three schedules of what trains when:
  1. `model.fine_tune(...)`: the head alone on the frozen backbone, then every
     layer at a 10x lower rate, in one call and one History; and the same
     with discriminative learning rates, each layer group at 0.75x the rate of
     the one above (`layer_decay=0.75`);
  2. `GradualUnfreeze`: the head alone, then two more layer groups from the top
     every 4 epochs, in one `fit`, the optimizer state carried across stages
     (with discriminative learning rates, `compile(layer_decay=0.75)`);
  3. the same with L2-SP, which pulls the backbone towards its pretrained
     weights.
An interrupted `GradualUnfreeze` run resumed with `keras.callbacks.BackupAndRestore`
continues at the stage it had reached; this is shown at the end.

Run: python examples/fine_tune_schedules.py [--out runs/schedules] [--seed 0]
     [--head-epochs 40] [--tune-epochs 16]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_transfer as kt  # noqa: E402

SIZE = 96


def upsample(images):
    return keras.ops.convert_to_numpy(keras.layers.Resizing(SIZE, SIZE)(images))


class Interrupt(keras.callbacks.Callback):
    """Stands in for a crash or a preempted machine at the start of an epoch."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted at epoch {epoch + 1}")


def new_model(seed: int) -> kt.TransferModel:
    return kt.TransferModel(num_classes=10, input_shape=(SIZE, SIZE, 1), seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/schedules")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument(
        "--head-epochs", type=int, default=40, help="the head alone, backbone frozen"
    )
    parser.add_argument(
        "--tune-epochs", type=int, default=16, help="then with backbone layers"
    )
    args = parser.parse_args()
    head_epochs, tune_epochs = args.head_epochs, args.tune_epochs
    os.makedirs(args.out, exist_ok=True)
    (x, y), (x_test, y_test) = kt.datasets.load_digits(args.per_class, args.seed)
    x, x_test = upsample(x), upsample(x_test)
    print(f"digits 0-9: {len(x)} training images, {len(x_test)} test images")
    results = []

    def record(name, model, started):
        accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
        results.append((name, accuracy, time.perf_counter() - started))

    # 1. One call: head first, then everything, at one rate or discriminative ones.
    for layer_decay in (None, 0.75):
        keras.utils.set_random_seed(args.seed)
        started = time.perf_counter()
        model = new_model(args.seed)
        history = model.fine_tune(
            x,
            y,
            freeze_epochs=head_epochs,
            epochs=tune_epochs,
            layer_decay=layer_decay,
            batch_size=32,
            verbose=0,
        )
        record(f"model.fine_tune (layer_decay={layer_decay})", model, started)
    print(f"fine_tune: one History of {len(history.history['loss'])} epochs")

    # 2. Gradual unfreezing from the top, in one fit.
    def gradual(l2_sp=None, callbacks=()):
        model = new_model(args.seed)
        model.compile(layer_decay=0.75, l2_sp=l2_sp)
        schedule = kt.GradualUnfreeze(
            at_epochs=range(head_epochs, head_epochs + tune_epochs, 4),
            groups_per_step=2,
        )
        model.fit(
            x,
            y,
            epochs=head_epochs + tune_epochs,
            batch_size=32,
            verbose=0,
            callbacks=[schedule, *callbacks],
        )
        return model, schedule

    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    model, schedule = gradual()
    record("GradualUnfreeze (2 groups every 4 epochs)", model, started)
    for epoch, change in schedule.changes:
        print(f"  epoch {epoch + 1}: {change}")

    # 3. The same with L2-SP.
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    model, _ = gradual(l2_sp=0.01)
    record("GradualUnfreeze + L2-SP (0.01)", model, started)

    print(f"\ntest accuracy on digits 0-9 ({args.per_class} training images per class)")
    print("| schedule | accuracy | time |\n|---|---|---|")
    for name, accuracy, seconds in results:
        print(f"| {name} | {accuracy:.3f} | {seconds:.0f} s |")

    # Resuming: interrupt a gradual run after its second stage began, resume it.
    backup = os.path.join(args.out, "backup")
    resume_at = head_epochs + (3 * tune_epochs) // 8
    try:
        gradual(
            callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt(resume_at)]
        )
    except KeyboardInterrupt as stop:
        print(f"\n{stop}; resuming from {backup}")
    model, schedule = gradual(callbacks=[keras.callbacks.BackupAndRestore(backup)])
    epoch, change = schedule.changes[0]
    print(f"resumed at epoch {epoch + 1} with {change}")
    model.save(os.path.join(args.out, "digits_gradual.keras"))


if __name__ == "__main__":
    main()
