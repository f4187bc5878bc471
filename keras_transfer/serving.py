"""Export for TensorFlow Serving: a versioned SavedModel that serves as is.

`export_for_serving(model, "models/xray")` writes `models/xray/<N>/`, the
layout TensorFlow Serving watches, atomically: the SavedModel is written to a
hidden temporary folder beside it and renamed into place, so a server never
sees half a version.

Signatures (all run the model with `training=False`, so BatchNorm uses its
moving statistics and no serving call changes a variable):
- `serving_default`: `images`, float32 `(batch, height, width, channels)`,
  raw 0-255 pixels of any size (resized inside to the model's size);
- `serving_uint8`: the same for uint8 images;
- `serving_bytes`: `image_bytes`, a batch of encoded JPEG/PNG/GIF/BMP images
  (`tf.string`; base64 `{"b64": ...}` over the REST API), decoded and
  resized inside.
Outputs of a classifier: `probabilities`, and the `top_k` best
`top_k_indices`, `top_k_scores` and `top_k_classes` (names); of a regressor:
`predictions`. The class names also ship as `assets/labels.txt`, and
`assets.extra/tf_serving_warmup_requests` holds warmup requests in TF
Serving's format, so the first real request is not slow.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

SIGNATURES = ("serving_default", "serving_uint8", "serving_bytes")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _version_dirs(base_dir: str) -> list[int]:
    if not os.path.isdir(base_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(base_dir)
        if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(base_dir, name))
    )


def _check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise TypeError(
            f"Expected `version` to be a positive int or None. Received: "
            f"version={version!r} of type {type(version).__name__}"
        )
    if version < 1:
        raise ValueError(
            f"Expected `version` to be a positive int (TF Serving loads the "
            f"highest). Received: version={version}"
        )
    return int(version)


def _class_names(model, num_outputs: int, class_names) -> list[str]:
    names = class_names
    if names is None:
        names = getattr(model, "class_names", None)
    if names is None:
        names = [f"class_{i}" for i in range(num_outputs)]
    names = [str(name) for name in names]
    if len(names) != num_outputs:
        raise ValueError(
            f"Got {len(names)} class names for a model with {num_outputs} outputs; "
            "pass one name per output unit."
        )
    if any("\n" in name for name in names):
        raise ValueError("Class names cannot contain newlines (labels.txt).")
    return names


class _Endpoints:
    """The serving functions of one model."""

    def __init__(self, model, classifier: bool, names: list[str], top_k: int):
        shape = model.inputs[0].shape
        if len(shape) != 4 or None in shape[1:]:
            raise ValueError(
                "Serving export needs a model taking images of a fixed size, "
                f"(batch, height, width, channels). Received: input shape {shape}"
            )
        self.model = model
        self.height, self.width, self.channels = (int(d) for d in shape[1:])
        self.classifier = classifier
        self.names = names
        self.top_k = min(top_k, len(names)) if classifier else 0

    def _resized(self, images):
        images = tf.cast(images, tf.float32)
        same = tf.logical_and(
            tf.equal(tf.shape(images)[1], self.height),
            tf.equal(tf.shape(images)[2], self.width),
        )
        return tf.cond(
            same,
            lambda: tf.ensure_shape(images, [None, self.height, self.width, None]),
            lambda: tf.image.resize(images, (self.height, self.width)),
        )

    def outputs(self, images):
        images = tf.ensure_shape(
            self._resized(images), [None, self.height, self.width, self.channels]
        )
        predictions = tf.cast(self.model(images, training=False), tf.float32)
        if not self.classifier:
            return {"predictions": predictions}
        scores, indices = tf.math.top_k(predictions, k=self.top_k)
        return {
            "probabilities": predictions,
            "top_k_scores": scores,
            "top_k_indices": indices,
            "top_k_classes": tf.gather(tf.constant(self.names), indices),
        }

    def decode(self, image_bytes):
        def one(data):
            image = tf.io.decode_image(
                data, channels=self.channels, expand_animations=False
            )
            image = tf.cast(image, tf.float32)
            image = tf.image.resize(image, (self.height, self.width))
            return tf.ensure_shape(image, [self.height, self.width, self.channels])

        return tf.map_fn(
            one,
            image_bytes,
            fn_output_signature=tf.TensorSpec(
                [self.height, self.width, self.channels], tf.float32
            ),
        )

    def add_to(self, archive) -> None:
        image = [None, None, None, self.channels]
        archive.add_endpoint(
            name="serving_default",
            fn=self.outputs,
            input_signature=[tf.TensorSpec(image, tf.float32, name="images")],
        )
        archive.add_endpoint(
            name="serving_uint8",
            fn=self.outputs,
            input_signature=[tf.TensorSpec(image, tf.uint8, name="images")],
        )
        archive.add_endpoint(
            name="serving_bytes",
            fn=lambda image_bytes: self.outputs(self.decode(image_bytes)),
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )


def _warmup_records(model_name: str, images: np.ndarray) -> list[bytes]:
    from tensorflow_serving.apis import (
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    records = []
    encoded = [
        tf.io.encode_png(tf.cast(np.clip(np.round(image), 0, 255), tf.uint8)).numpy()
        for image in images
    ]
    requests = [
        ("serving_default", "images", tf.make_tensor_proto(images.astype("float32"))),
        (
            "serving_uint8",
            "images",
            tf.make_tensor_proto(np.clip(np.round(images), 0, 255).astype("uint8")),
        ),
        ("serving_bytes", "image_bytes", tf.make_tensor_proto(encoded)),
    ]
    for signature, key, tensor in requests:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[key].CopyFrom(tensor)
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def export_for_serving(
    model: keras.Model,
    base_dir: str,
    *,
    version: int | None = None,
    overwrite: bool = False,
    class_names=None,
    top_k: int = 5,
    warmup: bool = True,
    warmup_images=None,
) -> str:
    """Writes `model` as `base_dir/<version>/`, a SavedModel for TF Serving.

    Args:
        model: keras.Model taking images `(batch, H, W, C)`; a `TransferModel`
            (its `class_names` and task are used) or any Keras image model.
        base_dir: str. The model's folder, as given to TF Serving
            (`--model_base_path`); created if missing.
        version: int or None. None takes the next integer after the highest
            version present (1 in an empty folder).
        overwrite: bool. Replace an existing version; without it an existing
            version is never touched.
        class_names: list of str or None. Names of the outputs; default: the
            model's `class_names`, else `class_<i>`.
        top_k: int. How many best classes the outputs list.
        warmup: bool. Write `assets.extra/tf_serving_warmup_requests`.
        warmup_images: array or None. Images `(n, H, W, C)` for the warmup
            requests (a few real ones are best); default: one mid-grey image.

    Returns:
        The path of the version folder written.

    Raises:
        FileExistsError: if the version exists and `overwrite` is False.
        ValueError: for a model that does not take fixed-size images, or bad
            arguments. On any error nothing is left behind in `base_dir`.
    """
    if version is not None:
        version = _check_version(version)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"Expected `top_k` to be a positive int. Received: {top_k!r}")
    base_dir = os.fspath(base_dir)
    task = getattr(model, "task", None)
    num_outputs = int(model.outputs[0].shape[-1])
    classifier = task in ("multiclass", "multilabel") or (
        task is None and len(model.outputs[0].shape) == 2 and num_outputs > 1
    )
    names = _class_names(model, num_outputs, class_names) if classifier else []
    endpoints = _Endpoints(model, classifier, names, top_k)
    if warmup_images is None:
        warmup_images = np.full(
            (1, endpoints.height, endpoints.width, endpoints.channels), 128.0
        )
    warmup_images = np.asarray(warmup_images, dtype="float32")
    if warmup_images.ndim != 4 or warmup_images.shape[1:] != (
        endpoints.height,
        endpoints.width,
        endpoints.channels,
    ):
        raise ValueError(
            "Expected `warmup_images` of shape (n, "
            f"{endpoints.height}, {endpoints.width}, {endpoints.channels}). "
            f"Received: shape {warmup_images.shape}"
        )

    existing = _version_dirs(base_dir)
    if version is None:
        version = existing[-1] + 1 if existing else 1
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(
            f"Version {version} already exists at {target}; pass overwrite=True to "
            "replace it, or another version (None takes the next one)."
        )
    created = not os.path.isdir(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".export-{version}-", dir=base_dir)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        endpoints.add_to(archive)
        archive.write_out(staging, verbose=False)
        if classifier:
            os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
            with open(os.path.join(staging, "assets", "labels.txt"), "w") as handle:
                handle.write("\n".join(names) + "\n")
        if warmup:
            os.makedirs(os.path.join(staging, "assets.extra"))
            records = _warmup_records(
                os.path.basename(os.path.normpath(base_dir)), warmup_images
            )
            with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
                for record in records:
                    writer.write(record)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(base_dir, ignore_errors=True)
        raise
    return target


def _move_into_place(staging: str, target: str) -> None:
    """Renames the finished export to its version folder (replacing one)."""
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    retired = tempfile.mkdtemp(
        prefix=f".retired-{os.path.basename(target)}-", dir=os.path.dirname(target)
    )
    old = os.path.join(retired, "old")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
