"""keras-transfer: transfer learning as a drop-in part of Keras 3 `model.fit`."""

from importlib.metadata import PackageNotFoundError, version

from keras_transfer import datasets, demo
from keras_transfer.backbones import (
    Backbone,
    BackboneSpec,
    ImagePreprocessing,
    WeightsUnavailableError,
    find_output_layer,
    list_backbones,
    pop_top,
    resolve,
    zoo,
)
from keras_transfer.backbones.zoo import (
    UnsafeCheckpointError,
    decode_imagenet,
    efficientnet_lite,
    imagenet_class_names,
    load_torch_checkpoint,
    mobilenet_v2_torchvision,
)
from keras_transfer.callbacks import ChainThaw, GradualUnfreeze, UnfreezeSchedule
from keras_transfer.estimators import (
    TransferClassifier,
    TransferFeatures,
    TransferRegressor,
)
from keras_transfer.freezing import (
    LayerGroup,
    StrategyDecision,
    choose_strategy,
    layer_groups,
)
from keras_transfer.heads import build_head
from keras_transfer.model import TransferModel
from keras_transfer.optimizers import GroupedOptimizer, group_multipliers
from keras_transfer.serving import export_for_serving
from keras_transfer.widening import widen_output

try:
    __version__ = version("keras-transfer")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ChainThaw",
    "GradualUnfreeze",
    "GroupedOptimizer",
    "ImagePreprocessing",
    "LayerGroup",
    "StrategyDecision",
    "TransferClassifier",
    "TransferFeatures",
    "TransferModel",
    "TransferRegressor",
    "UnfreezeSchedule",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "build_head",
    "datasets",
    "demo",
    "choose_strategy",
    "decode_imagenet",
    "efficientnet_lite",
    "export_for_serving",
    "imagenet_class_names",
    "find_output_layer",
    "group_multipliers",
    "layer_groups",
    "list_backbones",
    "load_torch_checkpoint",
    "mobilenet_v2_torchvision",
    "pop_top",
    "resolve",
    "widen_output",
    "zoo",
    "__version__",
]
