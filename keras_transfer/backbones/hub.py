"""TF-Hub and SavedModel backbones that train inside Keras 3 models.

`tensorflow_hub.KerasLayer` is a Keras 2 (tf_keras) layer and cannot be used
in a Keras 3 model; `keras.layers.TFSMLayer` cannot be fine-tuned with
optimizers that keep slot variables (it keeps ':0' in variable names), never
passes `training` and drops the SavedModel's regularization losses.
`HubBackbone` loads the SavedModel with `tf.saved_model.load`, wraps each of
its variables in a `keras.Variable` that shares the same TensorFlow variable
(no copy), so Keras optimizers, freezing and `.keras` saving see them, and
calls the SavedModel's own function.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

import keras

from keras_transfer.backbones.weights import WeightsUnavailableError

# ImageNet classifiers on TF-Hub output 1000 or 1001 (with "background") logits.
_CLASSIFIER_WIDTHS = (1000, 1001)


def hub_cache_dir() -> str:
    """Where tensorflow_hub caches models: `$TFHUB_CACHE_DIR`, or its temp default."""
    return os.environ.get("TFHUB_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "tfhub_modules"
    )


def hub_cache_path(handle: str) -> str:
    """The folder tensorflow_hub reads a remote handle from, once it is cached."""
    return os.path.join(
        hub_cache_dir(), hashlib.sha1(handle.encode("utf8")).hexdigest()
    )


def is_saved_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def resolve_handle(handle: str) -> str:
    """Returns the local SavedModel folder of a handle, a URL or a path.

    Raises:
        FileNotFoundError: for a local path that holds no SavedModel.
        WeightsUnavailableError: for a remote handle that is not cached and
            cannot be downloaded, naming the folder to place it in.
    """
    if os.path.isdir(handle):
        if not is_saved_model_dir(handle):
            raise FileNotFoundError(
                f"No SavedModel in folder {handle!r} (no saved_model.pb). Pass the "
                "folder that `tf.saved_model.save` wrote, or a TF-Hub handle."
            )
        return handle
    if not re.match(r"^(https?|gs)://", handle):
        raise FileNotFoundError(
            f"Hub backbone {handle!r} is neither a folder nor a URL. Pass a local "
            "SavedModel folder or a handle such as "
            "'https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5'."
        )
    try:
        import tensorflow_hub
    except ImportError as error:
        raise ImportError(
            f"Resolving TF-Hub handle {handle!r} needs tensorflow_hub, which failed "
            f"to import: {error}. `pip install tensorflow-hub 'setuptools<82'` "
            "(tensorflow_hub imports pkg_resources, gone from setuptools 82)."
        ) from error
    try:
        return tensorflow_hub.resolve(handle)
    except Exception as error:  # URLError, HTTPError, OSError, ValueError
        cached = hub_cache_path(handle)
        raise WeightsUnavailableError(
            f"Could not download TF-Hub model {handle!r} (this machine may be "
            f"offline): {error}\nTo use it without network access, download it on "
            "a machine with access and either pass the SavedModel folder "
            f"('hub:/path/to/folder'), or extract it into {cached} (the cache "
            "folder tensorflow_hub reads for this handle; set TFHUB_CACHE_DIR to "
            "move the cache)."
        ) from error


def _reusable_variables(loaded):
    """Variables of a callable SavedModel, and the ids of the trainable ones.

    TF-Hub's reusable SavedModels list them as `variables` and
    `trainable_variables`; for others, those its traced functions capture.
    """
    if hasattr(loaded, "variables"):
        variables = list(loaded.variables)
        trainable = getattr(loaded, "trainable_variables", None)
        if trainable is None:
            trainable = [v for v in variables if v.trainable]
        return variables, {id(v) for v in trainable}
    unique = {}
    for function in getattr(loaded.__call__, "concrete_functions", []):
        for variable in function.variables:
            unique.setdefault(id(variable), variable)
    variables = list(unique.values())
    return variables, {id(v) for v in variables if v.trainable}


def _variable_name(variable) -> str:
    # Keras names may not contain '/', and ':0' breaks optimizer slot names.
    return variable.name.split(":")[0].replace("/", "_")


@keras.saving.register_keras_serializable(package="keras_transfer")
class HubBackbone(keras.layers.Layer):
    """A TF-Hub model or SavedModel as a Keras 3 layer that fine-tunes.

    Calls the SavedModel's `__call__` (TF-Hub's reusable SavedModel API) with
    `training=True` only while training AND this layer is trainable, so
    BatchNorm layers inside update their statistics only then; or a named
    `signature` (which takes no `training`). The SavedModel's
    `regularization_losses` are added to the layer's losses. Images go in as
    TF-Hub expects them: float in [0, 1], at the model's size.

    Saving: a `.keras` file keeps the handle and the current (fine-tuned)
    values of every variable; loading it loads the SavedModel from the handle
    again (so the folder, or the cached download, must exist then) and
    restores the saved values into it.

    Args:
        handle: str. A local SavedModel folder, or a TF-Hub / Kaggle Models URL
            (downloaded and cached by tensorflow_hub).
        output_key: str or None. For models that return a dict, the output
            to use as features.
        signature: str or None. Call this signature instead of `__call__`.

    Example:

    >>> layer = HubBackbone("/path/to/feature_vector_savedmodel")  # doctest: +SKIP
    >>> layer(np.zeros((1, 224, 224, 3), "float32")).shape  # doctest: +SKIP
    TensorShape([1, 1280])
    """

    def __init__(
        self,
        handle: str,
        output_key: str | None = None,
        signature: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        import tensorflow as tf

        self.handle = os.fspath(handle)
        self.output_key = output_key
        self.signature = signature
        loaded = tf.saved_model.load(resolve_handle(self.handle))
        if signature is not None:
            signatures = dict(getattr(loaded, "signatures", {}))
            if signature not in signatures:
                raise ValueError(
                    f"SavedModel {self.handle!r} has no signature {signature!r}. "
                    f"Received: signature={signature!r}; it has {sorted(signatures)}."
                )
            function = signatures[signature]
            self._signature_input = next(iter(function.structured_input_signature[1]))
            variables = list(function.variables)
            trainable_ids = {id(v) for v in function.trainable_variables}
        elif callable(loaded):
            function = loaded
            variables, trainable_ids = _reusable_variables(loaded)
        else:
            raise ValueError(
                f"SavedModel {self.handle!r} cannot be called (no __call__). Pass "
                "`signature=` one of "
                f"{sorted(dict(getattr(loaded, 'signatures', {})))}."
            )
        self._loaded = loaded  # keeps the functions and their resources alive
        self._function = function
        self._takes_training = signature is None
        self._regularizers = list(getattr(loaded, "regularization_losses", []))
        self.hub_variables = [
            keras.Variable(
                initializer=variable,
                trainable=id(variable) in trainable_ids,
                name=_variable_name(variable),
            )
            for variable in variables
        ]

    def call(self, images, training=None):
        if self.signature is not None:
            outputs = self._function(**{self._signature_input: images})
        else:
            flag = bool(training) and self.trainable
            if self._takes_training:
                try:
                    outputs = self._function(images, training=flag)
                except (TypeError, ValueError):
                    # Traced without a `training` argument (e.g. exported models).
                    self._takes_training = False
            if not self._takes_training:
                outputs = self._function(images)
        outputs = self._select(outputs)
        for regularizer in self._regularizers:
            self.add_loss(regularizer())
        return outputs

    def _select(self, outputs):
        if isinstance(outputs, dict):
            if self.output_key not in outputs:
                raise ValueError(
                    f"SavedModel {self.handle!r} returns a dict with keys "
                    f"{sorted(outputs)}; pass `output_key` to choose the features. "
                    f"Received: output_key={self.output_key!r}"
                )
            return outputs[self.output_key]
        if self.output_key is not None:
            raise ValueError(
                f"SavedModel {self.handle!r} returns a single tensor, not a dict. "
                f"Received: output_key={self.output_key!r}; pass output_key=None."
            )
        if outputs.shape[-1] in _CLASSIFIER_WIDTHS:
            suggestion = self.handle.replace("/classification/", "/feature_vector/")
            raise ValueError(
                f"SavedModel {self.handle!r} looks like an ImageNet classifier: it "
                f"outputs {outputs.shape[-1]} logits, not features. Use its "
                f"feature-vector version"
                + (f" ({suggestion!r})" if suggestion != self.handle else "")
                + ", or a model whose dict output holds features (`output_key`)."
            )
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "handle": self.handle,
            "output_key": self.output_key,
            "signature": self.signature,
        }
