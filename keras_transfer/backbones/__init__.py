"""Where pretrained features come from: registry, Keras Applications, surgery."""

from keras_transfer.backbones.backbone import Backbone
from keras_transfer.backbones.preprocessing import ImagePreprocessing
from keras_transfer.backbones.registry import (
    BackboneSpec,
    get_spec,
    list_backbones,
    register,
    resolve,
)
from keras_transfer.backbones.surgery import find_output_layer, pop_top
from keras_transfer.backbones.weights import WeightsUnavailableError

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ImagePreprocessing",
    "WeightsUnavailableError",
    "find_output_layer",
    "get_spec",
    "list_backbones",
    "pop_top",
    "register",
    "resolve",
]
