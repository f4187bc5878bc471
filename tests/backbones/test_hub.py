"""TF-Hub / SavedModel backbones, on tiny reusable SavedModels built here.

Each fixture model follows TF-Hub's reusable SavedModel API: `__call__` traced
for training True and False, `variables`, `trainable_variables` and
`regularization_losses`; its "BatchNorm" keeps a moving mean that only a
training call updates.
"""

import shutil
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from hub_models import FEATURES, REGULARIZATION, SIZE
from hub_models import save_hub_model as _save

import keras_transfer as kt
from keras_transfer.backbones.hub import HubBackbone, hub_cache_path


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {
        "features": _save(root / "features"),
        "classifier": _save(root / "classification", width=1001),
        "dict": _save(root / "dict", dict_output=True),
    }


@pytest.fixture
def features_copy(saved_models, tmp_path):
    """A private copy: training writes into the SavedModel's loaded variables only,
    but each test gets its own folder anyway."""
    return shutil.copytree(saved_models["features"], tmp_path / "features")


def _images(n=8, seed=0):
    return (
        np.random.default_rng(seed)
        .uniform(0, 255, (n, SIZE, SIZE, 3))
        .astype("float32")
    )


def _model(handle, **kwargs):
    return kt.TransferModel(
        f"hub:{handle}", num_classes=2, input_shape=(SIZE, SIZE, 3), seed=0, **kwargs
    )


def _hub_layer(model):
    return model.backbone.model.get_layer("hub")


def _values(layer):
    return {v.name: v.numpy().copy() for v in layer.hub_variables}


def test_adam_fine_tuning_updates_the_savedmodel_variables(features_copy):
    model = _model(features_copy)
    layer = _hub_layer(model)
    assert [v.name for v in layer.hub_variables] == ["dense_kernel", "bn_moving_mean"]
    before = _values(layer)
    model.unfreeze()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(_images(), np.array([0, 1] * 4), epochs=2, verbose=0)
    after = _values(layer)
    assert not np.allclose(before["dense_kernel"], after["dense_kernel"])
    # The Keras variable IS the SavedModel's variable: the call sees new values.
    np.testing.assert_array_equal(layer._loaded.kernel.numpy(), after["dense_kernel"])
    # Default BatchNorm policy: statistics stay as pretrained.
    np.testing.assert_array_equal(before["bn_moving_mean"], after["bn_moving_mean"])


def test_frozen_backbone_changes_nothing(features_copy):
    model = _model(features_copy, batchnorm="trainable")
    layer = _hub_layer(model)
    before = _values(layer)
    model.compile()
    model.fit(_images(), np.array([0, 1] * 4), epochs=2, verbose=0)
    for name, value in _values(layer).items():
        np.testing.assert_array_equal(before[name], value, err_msg=name)
    assert model.get_layer("predictions").kernel.numpy().any()


def test_statistics_move_only_when_training_and_trainable(features_copy):
    model = _model(features_copy, batchnorm="trainable")
    model.unfreeze()
    model.compile()
    layer = _hub_layer(model)
    before = _values(layer)["bn_moving_mean"]
    model.predict(_images(), verbose=0)
    model.evaluate(_images(), np.array([0, 1] * 4), verbose=0)
    np.testing.assert_array_equal(_values(layer)["bn_moving_mean"], before)
    model.fit(_images(), np.array([0, 1] * 4), epochs=1, verbose=0)
    assert not np.allclose(_values(layer)["bn_moving_mean"], before)


def test_regularization_losses_reach_the_model(features_copy):
    model = _model(features_copy)
    model(_images(2))
    kernel = _hub_layer(model)._loaded.kernel.numpy()
    expected = REGULARIZATION * float((kernel**2).sum())
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-5)


def test_save_and_load_keep_fine_tuned_values(features_copy, tmp_path):
    model = _model(features_copy)
    model.unfreeze()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(_images(), np.array([0, 1] * 4), epochs=2, verbose=0)
    tuned = _values(_hub_layer(model))
    path = str(tmp_path / "hub_model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kt.TransferModel)
    for name, value in _values(_hub_layer(loaded)).items():
        np.testing.assert_array_equal(tuned[name], value, err_msg=name)
    x = _images(4, seed=1)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    assert _hub_layer(loaded).trainable


def test_export_matches_predict(features_copy, tmp_path):
    model = _model(features_copy)
    x = _images(4, seed=2)
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "export"), format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_allclose(served.serve(x).numpy(), expected, atol=1e-6)


def test_dict_outputs_need_output_key(saved_models):
    with pytest.raises(ValueError, match=r"\['default', 'logits'\].*output_key"):
        _model(saved_models["dict"])
    model = _model(saved_models["dict"], output_key="default")
    assert model.backbone.model.output_shape == (None, FEATURES)
    with pytest.raises(ValueError, match="single tensor"):
        _model(saved_models["features"], output_key="default")


def test_classifier_is_refused_with_the_feature_vector_hint(saved_models):
    with pytest.raises(ValueError, match="1001 logits.*/feature_vector"):
        _model(saved_models["classifier"].replace("classification", "classification/"))
    with pytest.raises(ValueError, match="1001 logits"):
        HubBackbone(saved_models["classifier"])(np.zeros((1, SIZE, SIZE, 3), "float32"))


def test_savedmodel_folder_without_prefix_and_bad_folders(saved_models, tmp_path):
    backbone = kt.resolve(saved_models["features"], input_shape=(SIZE, SIZE, 3))
    assert backbone.preprocessing == "hub"
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        kt.resolve(f"hub:{tmp_path}", input_shape=(SIZE, SIZE, 3))


def test_offline_handle_fails_fast_then_loads_from_the_cache(
    offline, monkeypatch, saved_models
):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(offline / "tfhub"))
    handle = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
    start = time.perf_counter()
    with pytest.raises(kt.WeightsUnavailableError) as info:
        _model(handle)
    assert time.perf_counter() - start < 30
    cached = hub_cache_path(handle)
    assert cached.startswith(str(offline / "tfhub"))
    assert cached in str(info.value)
    shutil.copytree(saved_models["features"], cached)
    model = _model(handle)
    assert model.predict(_images(2), verbose=0).shape == (2, 2)
