"""Input normalisation built into the model, so every model takes raw 0-255 images."""

from __future__ import annotations

import keras
from keras import ops

# ImageNet channel statistics on the 0-255 scale, as each convention states them.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN_RGB = (123.675, 116.28, 103.53)  # 255 * (0.485, 0.456, 0.406)
_TORCH_STD_RGB = (58.395, 57.12, 57.375)  # 255 * (0.229, 0.224, 0.225)

PREPROCESSING_MODES = ("caffe", "tf", "torch", "efficientnet_lite", "hub", "none")


@keras.saving.register_keras_serializable(package="keras_transfer")
class ImagePreprocessing(keras.layers.Layer):
    """Maps raw RGB images in [0, 255] to what a pretrained network expects.

    The modes are those of `keras.applications.imagenet_utils.preprocess_input`:

    - `"caffe"`: RGB -> BGR, then subtract the ImageNet mean (VGG, ResNet v1).
    - `"tf"`: scale to [-1, 1] (MobileNet v1/v2, ResNet v2, Inception, Xception).
    - `"torch"`: scale to [0, 1], then normalise with the ImageNet mean and
      standard deviation (DenseNet, most PyTorch checkpoints).
    - `"efficientnet_lite"`: `(x - 127) / 128` (EfficientNet-Lite, as trained).
    - `"hub"`: scale to [0, 1], TF-Hub's convention for image models.
    - `"none"`: pass through (networks with their own preprocessing layers,
      such as EfficientNet, MobileNetV3 and ConvNeXt).

    Args:
        mode: str. One of `"caffe"`, `"tf"`, `"torch"`, `"efficientnet_lite"`,
            `"hub"` or `"none"`.

    Example:

    >>> layer = ImagePreprocessing("tf")
    >>> layer(np.array([[[[0.0, 127.5, 255.0]]]])).numpy().tolist()
    [[[[-1.0, 0.0, 1.0]]]]
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"Expected `mode` to be one of {PREPROCESSING_MODES}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN_RGB, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD_RGB, self.compute_dtype)
            return (images - mean) / std
        if self.mode == "hub":
            return images / 255.0
        if self.mode == "efficientnet_lite":
            return (images - 127.0) / 128.0
        if self.mode == "caffe":
            mean_bgr = ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
            return ops.flip(images, axis=-1) - mean_bgr
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
