"""Fine-tune, export for TensorFlow Serving, and call the export as a server would.

1. EfficientNet-Lite0 (offline weights) learns scikit-learn's digits (a new head,
   10 images per class, grayscale 8x8 upsampled to 96 px).
2. `export_for_serving` writes `<out>/digits/1/`: raw-image and JPEG/PNG-bytes
   signatures, top-k class names, labels.txt, warmup requests.
3. The export is loaded the way TF Serving loads it (the SavedModel of the
   highest version) and answers two REST-style JSON requests: one with pixel
   arrays (`serving_default`) and one with base64 PNG bytes (`serving_bytes`).
   Its answers are compared with `model.predict`.

Run: python examples/export_serving.py [--out runs/serving]
Then, on a machine with Docker, serve it with TF Serving (see the README).
"""

from __future__ import annotations

import argparse
import base64
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transfer as kt  # noqa: E402

SIZE = 96


def rest_call(loaded, body: str) -> dict:
    """What TF Serving does with a REST `:predict` body, in-process."""
    request = json.loads(body)
    signature = loaded.signatures[request.get("signature_name", "serving_default")]
    (name,) = signature.structured_input_signature[1]
    instances = request["instances"]
    if name.endswith("_bytes"):  # TF Serving decodes {"b64": ...} for *_bytes
        values = [base64.b64decode(item["b64"]) for item in instances]
        tensor = tf.constant(values)
    else:
        tensor = tf.constant(instances, tf.float32)
    outputs = signature(**{name: tensor})
    rows = []
    for i in range(len(instances)):
        row = {}
        for key, value in outputs.items():
            value = value[i].numpy()
            row[key] = [v.decode() if isinstance(v, bytes) else v.item() for v in value]
        rows.append(row)
    return {"predictions": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/serving")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    (x, y), (x_test, y_test) = kt.datasets.load_digits(per_class=10, seed=args.seed)
    resize = keras.layers.Resizing(SIZE, SIZE)
    x = keras.ops.convert_to_numpy(resize(x))
    x_test = keras.ops.convert_to_numpy(resize(x_test[:200]))
    y_test = y_test[:200]
    names = [f"digit {d}" for d in range(10)]
    model = kt.TransferModel(
        num_classes=10, class_names=names, input_shape=(SIZE, SIZE, 1), seed=args.seed
    )
    model.compile()
    model.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0)
    accuracy = (model.predict(x_test, verbose=0).argmax(1) == y_test).mean()
    print(f"fine-tuned head: test accuracy {accuracy:.3f} on {len(y_test)} digits")

    base = os.path.join(args.out, "digits")
    path = model.export_for_serving(
        base, warmup_images=x[:2], overwrite=True, version=1
    )
    print(f"exported to {path}: {sorted(os.listdir(path))}")

    # TF Serving loads the highest version folder of the base path.
    versions = sorted(int(v) for v in os.listdir(base) if v.isdigit())
    loaded = tf.saved_model.load(os.path.join(base, str(versions[-1])))
    print(f"signatures: {sorted(loaded.signatures)}")

    images = np.round(x_test[:2])
    body = json.dumps({"instances": images.tolist()})
    answer = rest_call(loaded, body)
    expected = model.predict(images, verbose=0)
    served = np.array([row["probabilities"] for row in answer["predictions"]])
    print(
        "pixels -> top-3: "
        + str([row["top_k_classes"][:3] for row in answer["predictions"]])
        + f", true: {[names[i] for i in y_test[:2]]}; max |served - predict| = "
        f"{np.abs(served - expected).max():.1e}"
    )

    pngs = [tf.io.encode_png(tf.cast(image, tf.uint8)).numpy() for image in images]
    body = json.dumps(
        {
            "signature_name": "serving_bytes",
            "instances": [{"b64": base64.b64encode(p).decode()} for p in pngs],
        }
    )
    answer = rest_call(loaded, body)
    served = np.array([row["probabilities"] for row in answer["predictions"]])
    top1 = [row["top_k_classes"][0] for row in answer["predictions"]]
    print(
        f"PNG bytes -> top-1: {top1}; max |served - predict| = "
        f"{np.abs(served - expected).max():.1e}"
    )
    before = [v.numpy().copy() for v in loaded.variables]
    for _ in range(3):
        loaded.signatures["serving_default"](tf.constant(images, tf.float32))
    unchanged = all(
        np.array_equal(a, v.numpy())
        for a, v in zip(before, loaded.variables, strict=True)
    )
    print(f"variables unchanged after three serving calls: {unchanged}")


if __name__ == "__main__":
    main()
