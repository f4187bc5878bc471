"""A TF-Hub / SavedModel backbone in a Keras 3 model: train, fine-tune, save, export.

Offline, a TF-Hub model cannot be downloaded, so step 1 writes one: the
ImageNet EfficientNet-Lite0 feature extractor saved as a TF-Hub-style reusable
SavedModel (`__call__` traced for training True and False, `variables`,
`trainable_variables`, `regularization_losses`; images in [0, 1]). Online, use
a handle instead of the folder, e.g.
"hub:https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5".

Run: python examples/hub_backbone.py [--out runs/hub_backbone] [--seed 0]
     [--head-epochs 40] [--fine-tune-epochs 10]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402

SIZE = 96


def write_reusable_savedmodel(folder: str) -> None:
    """EfficientNet-Lite0 features as TF-Hub publishes image feature vectors."""
    backbone = kt.efficientnet_lite(0, include_top=False, input_shape=(SIZE, SIZE, 3))
    inputs = keras.Input((SIZE, SIZE, 3))  # TF-Hub convention: floats in [0, 1]
    pixels = keras.layers.Rescaling(255.0)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(pixels))
    feature_vector = keras.Model(inputs, pooled)

    @tf.function
    def call(images, training=False):
        return feature_vector(images, training=training)

    spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)
    for training in (True, False):
        call.get_concrete_function(spec, training)
    root = tf.train.Checkpoint()
    root.__call__ = call
    root.variables = [v.value for v in feature_vector.weights]
    root.trainable_variables = [v.value for v in feature_vector.trainable_weights]
    root.regularization_losses = []
    root.state = [v.value for v in feature_vector.variables]  # e.g. dropout seeds
    tf.saved_model.save(root, folder)


def resize(images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.layers.Resizing(SIZE, SIZE)(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hub_backbone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-epochs", type=int, default=40)
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()

    folder = os.path.join(args.out, "lite0_feature_vector")
    write_reusable_savedmodel(folder)
    print(f"1. reusable SavedModel written to {folder}")

    (x_train, y_train), (x_test, y_test) = kt.datasets.load_digits(10, args.seed)
    x_train, x_test = resize(x_train), resize(x_test)
    model = kt.TransferModel(
        f"hub:{folder}", num_classes=10, input_shape=(SIZE, SIZE, 1), seed=args.seed
    )
    hub = model.backbone.model.get_layer("hub")
    print(f"2. TransferModel on it: {len(hub.hub_variables)} SavedModel variables")
    model.compile()
    model.fit(x_train, y_train, epochs=args.head_epochs, batch_size=32, verbose=0)
    head_only = model.evaluate(x_test, y_test, verbose=0)[1]

    before = hub.hub_variables[0].numpy().copy()
    model.unfreeze()
    model.fit(x_train, y_train, epochs=args.fine_tune_epochs, batch_size=32, verbose=0)
    fine_tuned = model.evaluate(x_test, y_test, verbose=0)[1]
    moved = float(np.abs(hub.hub_variables[0].numpy() - before).max())
    print(
        f"3. test accuracy on {len(x_test)} digits: head only {head_only:.3f}, "
        f"fine-tuned {fine_tuned:.3f} (SavedModel weights moved by up to {moved:.2e})"
    )

    path = os.path.join(args.out, "digits_hub.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    sample = x_test[:16]
    expected = model.predict(sample, verbose=0)
    reload_diff = np.abs(reloaded.predict(sample, verbose=0) - expected).max()
    print(f"4. saved and reloaded {path}: max prediction difference {reload_diff:.1e}")

    export = os.path.join(args.out, "export")
    model.export(export, format="tf_saved_model", verbose=False)
    served_model = tf.saved_model.load(export)  # keep it alive while calling
    served = served_model.serve(sample).numpy()
    print(
        f"5. exported to {export}: max difference to predict "
        f"{np.abs(served - expected).max():.1e}"
    )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
