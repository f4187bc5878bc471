import dataclasses
import os
import time

import keras
import numpy as np
import pytest
from conftest import SIZE, make_classifier

import keras_transfer as kt
from keras_transfer.backbones import (
    Backbone,
    WeightsUnavailableError,
    get_spec,
    list_backbones,
    resolve,
)


def test_every_keras_application_is_registered_under_both_names():
    constructors = [n for n in dir(keras.applications) if n[0].isupper()]
    assert len(constructors) == 40
    names = list_backbones()
    for constructor in constructors:
        spec = get_spec(constructor)
        assert spec.name in names
        assert spec.name == spec.name.lower()
    assert get_spec("MobileNetV3Small") is get_spec("mobilenet_v3_small")
    assert get_spec("ResNet50V2").name == "resnet50_v2"
    assert get_spec("efficientnet_b0").native_size == 224
    assert get_spec("inception_v3").native_size == 299


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="'mobilenet_v3_smal'.*'mobilenet_v3_small'"):
        get_spec("mobilenet_v3_smal")
    with pytest.raises(ValueError, match="Unknown backbone 'no_such_net'"):
        resolve("no_such_net")


def test_named_backbone_with_preprocessing_inside():
    backbone = resolve("mobilenet_v2", weights=None, input_shape=(32, 32, 3))
    assert isinstance(backbone, Backbone)
    assert backbone.preprocessing == "tf"
    assert backbone.spec_name == "mobilenet_v2"
    assert backbone.model.output.shape == (None, 1, 1, 1280)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = backbone.model(keras.applications.mobilenet_v2.preprocess_input(x))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(backbone(x)),
        keras.ops.convert_to_numpy(expected),
        atol=1e-5,
    )


def test_local_weights_file(tmp_path):
    source = resolve("mobilenet_v3_small", weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "notop.weights.h5")
    source.model.save_weights(path)
    loaded = resolve("mobilenet_v3_small", weights=path, input_shape=(32, 32, 3))
    for a, b in zip(source.model.weights, loaded.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_weights_file(tmp_path):
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        resolve("mobilenet_v3_small", weights=missing, input_shape=(32, 32, 3))


def test_wrong_weights_file_is_explained(tmp_path):
    path = str(tmp_path / "other.weights.h5")
    make_classifier().save_weights(path)
    with pytest.raises(ValueError, match="include_top=False"):
        resolve("mobilenet_v3_small", weights=path, input_shape=(32, 32, 3))


def test_model_file_paths(tmp_path):
    path = str(tmp_path / "pretrained.keras")
    make_classifier().save(path)
    backbone = resolve(path)
    assert backbone.model.output.shape == (None, 8)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        resolve(str(tmp_path / "missing.keras"))


def test_user_model_is_copied_not_shared(classifier):
    backbone = resolve(classifier)
    assert backbone.model.get_layer("conv1") is not classifier.get_layer("conv1")
    backbone.model.get_layer("conv1").kernel.assign(
        np.zeros(backbone.model.get_layer("conv1").kernel.shape)
    )
    assert np.abs(classifier.get_layer("conv1").kernel.numpy()).sum() > 0


def test_bad_backbone_type():
    with pytest.raises(TypeError, match="backbone=42"):
        resolve(42)
    with pytest.raises(ValueError, match="input_shape=None for 'hub:google/x'"):
        resolve("hub:google/x")
    with pytest.raises(FileNotFoundError, match="'google/x' is neither"):
        resolve("hub:google/x", input_shape=(8, 8, 3))


def test_offline_imagenet_fails_fast_with_instructions(offline):
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        resolve("mobilenet_v3_small", weights="imagenet", input_shape=(32, 32, 3))
    assert time.perf_counter() - start < 30
    message = str(info.value)
    assert "weights='/path/to/weights_mobilenet_v3_small" in message
    assert os.path.join(str(offline), "models", "weights_mobilenet_v3_small") in message
    assert "https://" in message


def test_offline_never_deletes_a_placed_file(offline):
    with pytest.raises(WeightsUnavailableError) as info:
        resolve("mobilenet_v3_small", weights="imagenet", input_shape=(32, 32, 3))
    fname = str(info.value).split("weights='/path/to/")[1].split("'")[0]
    placed = offline / "models" / fname
    placed.write_bytes(b"not the file Keras expects")
    with pytest.raises(WeightsUnavailableError, match="it was kept"):
        resolve("mobilenet_v3_small", weights="imagenet", input_shape=(32, 32, 3))
    assert placed.read_bytes() == b"not the file Keras expects"
    assert sorted(p.name for p in (offline / "models").iterdir()) == [fname]


def test_backbone_layer_round_trip(tmp_path):
    backbone = resolve(make_classifier(), preprocessing="tf")
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, backbone(inputs))
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3))
    np.testing.assert_allclose(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    )
    assert isinstance(loaded.layers[1], Backbone)
    assert loaded.layers[1].preprocessing == "tf"


def test_registering_a_backbone_first_keeps_the_builtins(monkeypatch):
    from keras_transfer.backbones import registry

    # A fresh process: nothing registered yet.
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_LOOKUP", {})
    monkeypatch.setattr(registry, "_BUILTINS", [])
    mine = kt.BackboneSpec(
        name="my_net",
        build=lambda shape, weights: None,
        native_size=32,
        preprocessing="none",
    )
    kt.backbones.register(mine)
    assert kt.backbones.get_spec("my_net") is mine
    assert kt.backbones.get_spec("mobilenet_v3_small").native_size == 224
    assert "efficientnet_lite0" in kt.list_backbones()
    with pytest.raises(ValueError, match="already registered"):
        kt.backbones.register(dataclasses.replace(mine, name="efficientnet_lite0"))


def test_an_alias_cannot_take_over_another_backbone():
    spec = kt.BackboneSpec(
        name="alias_thief",
        build=lambda shape, weights: None,
        native_size=32,
        preprocessing="none",
        aliases=("ResNet50",),
    )
    with pytest.raises(ValueError, match="already stand for other backbones"):
        kt.backbones.register(spec)
    assert kt.backbones.get_spec("resnet50").name == "resnet50"
    assert "alias_thief" not in kt.list_backbones()
