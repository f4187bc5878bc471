"""The one place where a user's backbone choice becomes a feature extractor."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable

import keras
import numpy as np

from keras_transfer.backbones.backbone import Backbone
from keras_transfer.backbones.hub import HubBackbone, is_saved_model_dir
from keras_transfer.backbones.preprocessing import PREPROCESSING_MODES
from keras_transfer.backbones.surgery import find_output_layer, pop_top


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone.

    Attributes:
        name: snake_case name users type (`"mobilenet_v3_small"`).
        build: callable `(input_shape, weights) -> keras.Model`, the network
            without its classifier and without pooling.
        native_size: input size the pretrained weights were trained at.
        preprocessing: `ImagePreprocessing` mode turning 0-255 RGB into what
            the network expects (`"none"` when the network has its own).
        block_pattern: regular expression whose first group, searched in
            layer names, identifies a block; None splits by depth.
        aliases: other accepted names (the Keras constructor name).
        description: one line for listings.
        build_classifier: callable `(input_shape, weights) -> keras.Model` or
            None: the whole pretrained classifier, for
            `TransferModel(keep_top=True)`.
    """

    name: str
    build: Callable[[tuple[int, int, int], object], keras.Model]
    native_size: int
    preprocessing: str
    block_pattern: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    build_classifier: Callable[[tuple[int, int, int], object], keras.Model] | None = (
        None
    )


_REGISTRY: dict[str, BackboneSpec] = {}
_LOOKUP: dict[str, str] = {}


def register(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Adds a backbone to the registry so every entry point accepts its name."""
    _ensure_builtins()  # so a name taken by a builtin is seen as taken
    return _add(spec, overwrite)


def _add(spec: BackboneSpec, overwrite: bool) -> BackboneSpec:
    if spec.preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            f"Expected `preprocessing` to be one of {PREPROCESSING_MODES}. "
            f"Received: preprocessing={spec.preprocessing!r} for {spec.name!r}"
        )
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A backbone named {spec.name!r} is already registered; pass "
            "overwrite=True to replace it."
        )
    keys = {k for key in (spec.name, *spec.aliases) for k in (key, key.lower())}
    taken = sorted(k for k in keys if _LOOKUP.get(k, spec.name) != spec.name)
    if taken and not overwrite:
        raise ValueError(
            f"Names {taken} of backbone {spec.name!r} already stand for other "
            "backbones; choose other aliases or pass overwrite=True."
        )
    _REGISTRY[spec.name] = spec
    for key in (spec.name, *spec.aliases):
        _LOOKUP[key] = spec.name
        _LOOKUP[key.lower()] = spec.name
    return spec


_BUILTINS: list[BackboneSpec] = []


def _ensure_builtins() -> None:
    """Registers the built-in backbones once, on first use of the registry."""
    if _BUILTINS:
        return
    # Modules by full path: the zoo package re-exports functions of the same
    # names as these modules.
    from keras_transfer.backbones.applications import application_specs
    from keras_transfer.backbones.zoo.efficientnet_lite import (
        backbone_specs as efficientnet_lite_specs,
    )
    from keras_transfer.backbones.zoo.mobilenet_v2_torchvision import (
        backbone_specs as mobilenet_v2_torchvision_specs,
    )

    specs = [
        *efficientnet_lite_specs(),
        *mobilenet_v2_torchvision_specs(),
        *application_specs(),
    ]
    for spec in specs:
        if spec.name not in _REGISTRY:  # a user's spec registered first wins
            _add(spec, overwrite=False)
    _BUILTINS.extend(specs)


def list_backbones() -> list[str]:
    """Returns the names of all registered backbones, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """Looks up a backbone by snake_case or Keras constructor name.

    Raises:
        ValueError: for an unknown name, listing the closest valid names.
    """
    _ensure_builtins()
    key = name.strip()
    found = _LOOKUP.get(key) or _LOOKUP.get(key.lower())
    if found is None:
        close = difflib.get_close_matches(key.lower(), list(_LOOKUP), n=3)
        close = list(dict.fromkeys(_LOOKUP[c] for c in close))
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown backbone {name!r}.{hint} `keras_transfer.list_backbones()` "
            "lists every name; a keras.Model, a `.keras`/`.h5` file path or "
            "'hub:<handle>' are accepted too."
        )
    return _REGISTRY[found]


def _looks_like_path(text: str) -> bool:
    return text.endswith((".keras", ".h5")) or os.path.isfile(text)


def _load_model_file(path: str) -> keras.Model:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Backbone model file not found. Received: backbone={path!r}. "
            "Pass an existing `.keras` or `.h5` model file, a keras.Model or a "
            "backbone name (see `keras_transfer.list_backbones()`)."
        )
    return keras.saving.load_model(path, compile=False)


def _clone(model: keras.Model) -> keras.Model:
    """A private copy, so training never changes the user's own model object."""
    try:
        copy = keras.models.clone_model(model)
    except Exception as error:  # clone_model raises several types
        raise ValueError(
            f"Could not copy model {model.name!r} ({type(model).__name__}) to use "
            f"it as a backbone: {error}. Subclassed models cannot be cut; pass a "
            "Functional or Sequential model."
        ) from error
    copy.set_weights(model.get_weights())
    return copy


def _hub_backbone(handle, input_shape, preprocessing, batchnorm, output_key):
    if input_shape is None:
        raise ValueError(
            f"TF-Hub and SavedModel backbones need the image size they expect. "
            f"Received: input_shape=None for 'hub:{handle}'; pass e.g. "
            "input_shape=(224, 224, 3)."
        )
    inputs = keras.Input(shape=tuple(input_shape))
    features = HubBackbone(handle, output_key=output_key, name="hub")(inputs)
    return Backbone(
        keras.Model(inputs, features, name="hub_model"),
        preprocessing=preprocessing or "hub",
        batchnorm=batchnorm,
        name="backbone",
    )


def resolve(
    backbone: str | keras.Model | Backbone,
    *,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    cut_at: str | int | None = None,
    preprocessing: str | None = None,
    batchnorm: str = "frozen",
    output_key: str | None = None,
) -> Backbone:
    """Turns a backbone choice into a `Backbone` layer that takes 0-255 images.

    Args:
        backbone: str, keras.Model or Backbone. A registered name
            (`"mobilenet_v3_small"`, or the constructor name `"MobileNetV3Small"`),
            a path to a `.keras`/`.h5` model file, `"hub:<handle or folder>"` (a
            TF-Hub / Kaggle Models handle or a SavedModel folder, see
            `HubBackbone`), a SavedModel folder, or a model the user already has,
            with or without its classifier (the classifier is cut off, see
            `cut_at`). A `Backbone` is returned as is.
        weights: str or None. For named backbones: `"imagenet"` (downloaded by
            Keras, cached under `$KERAS_HOME/models`), None (random
            initialisation) or the path of a local weights file of the network
            without its top. Ignored for models and files, which carry their
            own weights.
        input_shape: tuple. `(height, width, channels)` of what the feature
            extractor receives; defaults to the backbone's native size.
        cut_at: str, int or None. For models and files: the layer whose output
            becomes the features; None finds the classifier and cuts below it;
            `-1` uses the model output as is.
        preprocessing: str or None. Input normalisation (`"caffe"`, `"tf"`,
            `"torch"`, `"efficientnet_lite"`, `"hub"`, `"none"`); None uses the
            registry's for named backbones, `"hub"` ([0, 1]) for TF-Hub models and
            `"none"` for user models.
        batchnorm: str. `"frozen"` or `"trainable"`, see `Backbone`.
        output_key: str or None. For TF-Hub models that return a dict: the
            output to use as features (see `HubBackbone`).

    Returns:
        A `Backbone` layer.
    """
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, str) and backbone.startswith("hub:"):
        return _hub_backbone(
            backbone[len("hub:") :], input_shape, preprocessing, batchnorm, output_key
        )
    if isinstance(backbone, (str, os.PathLike)) and is_saved_model_dir(backbone):
        return _hub_backbone(
            os.fspath(backbone), input_shape, preprocessing, batchnorm, output_key
        )
    if isinstance(backbone, str) and not _looks_like_path(backbone):
        spec = get_spec(backbone)
        if cut_at is not None:
            raise ValueError(
                f"`cut_at` applies to models and model files; named backbone "
                f"{spec.name!r} is already built without its top. "
                f"Received: cut_at={cut_at!r}"
            )
        if input_shape is None:
            input_shape = (spec.native_size, spec.native_size, 3)
        model = spec.build(tuple(input_shape), weights)
        return _named_backbone(model, spec, preprocessing, batchnorm)
    model = pop_top(_user_model(backbone), cut_at=cut_at)
    return Backbone(
        model,
        preprocessing=preprocessing or "none",
        batchnorm=batchnorm,
        name="backbone",
    )


def _named_backbone(model, spec, preprocessing, batchnorm) -> Backbone:
    return Backbone(
        model,
        preprocessing=preprocessing or spec.preprocessing,
        block_pattern=spec.block_pattern,
        native_size=spec.native_size,
        spec_name=spec.name,
        batchnorm=batchnorm,
        name="backbone",
    )


def _user_model(backbone) -> keras.Model:
    """A private copy of the user's model, or the model in the user's file."""
    if isinstance(backbone, (str, os.PathLike)):
        return _load_model_file(os.fspath(backbone))
    if isinstance(backbone, keras.Model):
        return _clone(backbone)
    raise TypeError(
        "Expected `backbone` to be a backbone name, a keras.Model or a model "
        f"file path. Received: backbone={backbone!r} of type "
        f"{type(backbone).__name__}"
    )


def resolve_classifier(
    backbone: str | keras.Model,
    *,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    cut_at: str | int | None = None,
    preprocessing: str | None = None,
    batchnorm: str = "frozen",
):
    """Like `resolve`, but also returns the weights of the classifier it removes.

    For `TransferModel(keep_top=True)`: the pretrained output layer lives on,
    widened, as the new head's output layer.

    Args:
        backbone: str or keras.Model. A registered name whose spec can build
            the whole classifier, a classifier model, or its `.keras`/`.h5` file.
        weights, input_shape, preprocessing, batchnorm: as for `resolve`.
        cut_at: str, int or None. As for `resolve`: the output layer is the
            first layer above the cut, which must be the Dense or 1x1
            convolution the outputs come from.

    Returns:
        `(backbone_layer, kernel, bias)`: the `Backbone` and the output layer's
        weights as numpy arrays of shapes `(features, classes)` and
        `(classes,)`.
    """
    if isinstance(backbone, str) and (
        backbone.startswith("hub:") or is_saved_model_dir(backbone)
    ):
        raise ValueError(
            "keep_top=True needs a Keras classifier; TF-Hub and SavedModel "
            f"backbones are feature extractors. Received: backbone={backbone!r}"
        )
    if isinstance(backbone, str) and not _looks_like_path(backbone):
        spec = get_spec(backbone)
        if spec.build_classifier is None:
            raise ValueError(
                f"Backbone {spec.name!r} has no classifier to keep; pass "
                "keep_top=False, or the classifier model itself."
            )
        if input_shape is None:
            input_shape = (spec.native_size, spec.native_size, 3)
        classifier = spec.build_classifier(tuple(input_shape), weights)
    else:
        spec = None
        classifier = _user_model(backbone)
    top = find_output_layer(classifier)
    kernel, *rest = (keras.ops.convert_to_numpy(w) for w in top.weights)
    kernel = kernel.reshape(-1, kernel.shape[-1])
    bias = rest[0] if rest else np.zeros(kernel.shape[-1], kernel.dtype)
    features = pop_top(classifier, cut_at=cut_at)
    if features.outputs[0].shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"The cut at {cut_at!r} gives {features.outputs[0].shape[-1]} "
            f"features, but the output layer {top.name!r} takes {kernel.shape[0]}; "
            "with keep_top=True cut just below the output layer (cut_at=None)."
        )
    if spec is not None:
        return _named_backbone(features, spec, preprocessing, batchnorm), kernel, bias
    layer = Backbone(
        features,
        preprocessing=preprocessing or "none",
        batchnorm=batchnorm,
        name="backbone",
    )
    return layer, kernel, bias
