"""The `Backbone` layer: a pretrained feature extractor plus its preprocessing."""

from __future__ import annotations

import keras

from keras_transfer.backbones.preprocessing import ImagePreprocessing

BATCHNORM_POLICIES = ("frozen", "trainable")


@keras.saving.register_keras_serializable(package="keras_transfer")
class Backbone(keras.layers.Layer):
    """A feature extractor that takes raw 0-255 images.

    Wraps a headless `keras.Model` together with the input normalisation its
    pretrained weights expect, the layer-name pattern that splits it into
    blocks, and the BatchNorm policy.

    BatchNorm policy: with `batchnorm="frozen"` (the default) the wrapped model
    is always called with `training=False`, so BatchNormalization layers use
    and keep their pretrained moving statistics even while their other weights
    are being fine-tuned (and dropout inside the backbone is off). Statistics
    estimated on a small target dataset are noisy and destroy what was
    learned; keeping them is the usual advice for fine-tuning. In Keras 3,
    calling a sub-model with `training=False` inside a functional model is NOT
    enough: the outer `fit` overrides it, which is why this layer exists. With
    `batchnorm="trainable"` the `training` flag is passed through, so
    BatchNorm layers of unfrozen blocks update their statistics.

    Args:
        model: keras.Model. The feature extractor (no classifier on top).
        preprocessing: str. Input normalisation, see `ImagePreprocessing`.
        block_pattern: str or None. A regular expression whose first group,
            searched in layer names, identifies a block (see `layer_groups`).
        native_size: int or None. The input size the weights were trained at.
        spec_name: str or None. The registry name the backbone came from.
        batchnorm: str. `"frozen"` or `"trainable"`, see above.

    Example:

    >>> inputs = keras.Input((32, 32, 3))
    >>> features = keras.layers.Conv2D(8, 3)(inputs)
    >>> backbone = Backbone(keras.Model(inputs, features), preprocessing="tf")
    >>> backbone(np.zeros((1, 32, 32, 3))).shape
    TensorShape([1, 30, 30, 8])
    """

    def __init__(
        self,
        model: keras.Model,
        preprocessing: str = "none",
        block_pattern: str | None = None,
        native_size: int | None = None,
        spec_name: str | None = None,
        batchnorm: str = "frozen",
        **kwargs,
    ):
        if batchnorm not in BATCHNORM_POLICIES:
            raise ValueError(
                f"Expected `batchnorm` to be one of {BATCHNORM_POLICIES}. "
                f"Received: batchnorm={batchnorm!r}"
            )
        if not isinstance(model, keras.Model):
            raise TypeError(
                "Expected `model` to be a keras.Model. "
                f"Received: model={model!r} of type {type(model).__name__}"
            )
        super().__init__(**kwargs)
        self.model = model
        self.preprocessing = preprocessing
        self.preprocess = ImagePreprocessing(preprocessing, name="preprocess")
        self.block_pattern = block_pattern
        self.native_size = native_size
        self.spec_name = spec_name
        self.batchnorm = batchnorm

    @property
    def input_channels(self) -> int | None:
        return self.model.inputs[0].shape[-1] if self.model.inputs else None

    def build(self, input_shape):
        self.preprocess.build(input_shape)
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, images, training=None):
        if self.batchnorm == "frozen":
            training = False
        return self.model(self.preprocess(images), training=training)

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.model),
            "preprocessing": self.preprocessing,
            "block_pattern": self.block_pattern,
            "native_size": self.native_size,
            "spec_name": self.spec_name,
            "batchnorm": self.batchnorm,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
