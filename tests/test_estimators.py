"""scikit-learn estimators on a tiny registered backbone."""

import pickle

import joblib
import keras
import numpy as np
import pytest
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    check_cv,
    cross_val_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import keras_transfer as kt
from keras_transfer.backbones import BackboneSpec, register

TINY = "tiny_cnn_for_tests"
SIZE = 16


def _tiny_features(input_shape, weights):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv")(x)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, strides=2, name="block2_conv")(x)
    return keras.Model(inputs, x, name="tiny")


register(
    BackboneSpec(
        name=TINY,
        build=_tiny_features,
        native_size=SIZE,
        preprocessing="none",
        block_pattern=r"^block(\d+)",
    ),
    overwrite=True,
)


def classifier(**kwargs):
    kwargs = {"epochs": 2, "random_state": 0, "learning_rate": 0.01, **kwargs}
    return kt.TransferClassifier(TINY, weights=None, **kwargs)


def regressor(**kwargs):
    kwargs = {"epochs": 2, "random_state": 0, "learning_rate": 0.01, **kwargs}
    return kt.TransferRegressor(TINY, weights=None, **kwargs)


def images_and_labels(n=36, seed=0, labels=("cat", "dog", "owl")):
    """Images whose class shows in their brightness: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    y = np.array([labels[i % len(labels)] for i in range(n)])
    level = np.searchsorted(np.array(sorted(labels)), y)
    X = rng.uniform(0, 60, (n, SIZE, SIZE, 3)) + 90 * level[:, None, None, None]
    return X.astype("float32"), y


# --- Kind, labels, probabilities ----------------------------------------------


def test_kinds_and_stratified_cross_validation():
    X, y = images_and_labels(30)
    assert is_classifier(classifier()) and not is_regressor(classifier())
    assert is_regressor(regressor())
    assert isinstance(
        check_cv(5, y, classifier=is_classifier(classifier())), StratifiedKFold
    )
    scores = cross_val_score(classifier(epochs=1), X, y, cv=3)
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))


def test_string_labels_in_and_out():
    X, y = images_and_labels()
    model = classifier(epochs=15).fit(X, y)
    assert list(model.classes_) == ["cat", "dog", "owl"]
    assert model.model_.class_names == ["cat", "dog", "owl"]
    probabilities = model.predict_proba(X)
    assert probabilities.shape == (len(X), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    predicted = model.predict(X)
    assert predicted.dtype == y.dtype and set(predicted) <= set(y)
    assert model.score(X, y) > 0.6  # the classes differ in brightness
    assert model.strategy_ == "head_only"  # "auto": 12 examples per class


@pytest.mark.parametrize("labels", [(0, 1), (True, False), (3, 7, 11)])
def test_int_and_boolean_labels(labels):
    X, y = images_and_labels(24, labels=labels)
    model = classifier(epochs=1).fit(X, y)
    assert model.predict(X).dtype == y.dtype
    assert set(model.predict(X)) <= set(labels)


def test_grayscale_images_and_resizing():
    X, y = images_and_labels(12)
    model = classifier(epochs=1, image_size=SIZE * 2).fit(X[..., 0], y)
    assert model.image_shape_ == (SIZE * 2, SIZE * 2, 1)
    assert model.predict(X[:3, :, :, 0]).shape == (3,)


# --- Parameters, clone, grid search, pipelines --------------------------------


def test_clone_and_routed_parameters():
    model = classifier(
        model__pooling="max", compile__layer_decay=0.5, fit__shuffle=False
    )
    params = model.get_params()
    assert params["model__pooling"] == "max" and params["fit__shuffle"] is False
    copy = clone(model)
    assert copy.get_params() == params
    copy.set_params(model__pooling="avg", dropout=0.0)
    assert copy.model__pooling == "avg" and copy.dropout == 0.0
    X, y = images_and_labels(12)
    copy.fit(X, y)
    assert isinstance(copy.model_.optimizer, kt.GroupedOptimizer)  # layer_decay
    assert not hasattr(clone(copy), "model_")
    typo = kt.TransferClassifier(TINY, pooling="max")  # __init__ only stores
    assert typo.get_params()["pooling"] == "max"
    with pytest.raises(TypeError, match="model__"):
        typo.fit(X, y)


def test_grid_search_over_two_parameters_refits():
    X, y = images_and_labels(24)
    search = GridSearchCV(
        classifier(epochs=1),
        {"dropout": [0.0, 0.3], "model__pooling": ["avg", "max"]},
        cv=3,
    )
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.model_ is not None
    assert (
        search.best_estimator_.model__pooling == search.best_params_["model__pooling"]
    )
    assert search.predict(X).shape == (24,)


def test_features_in_a_pipeline():
    X, y = images_and_labels()
    features = kt.TransferFeatures(TINY, weights=None)
    embedded = features.fit_transform(X)
    assert embedded.shape == (len(X), 6)
    assert list(features.get_feature_names_out())[:2] == [
        "transferfeatures0",
        "transferfeatures1",
    ]
    pipeline = make_pipeline(
        kt.TransferFeatures(TINY, weights=None), LogisticRegression(max_iter=500)
    ).fit(X, y)
    assert pipeline.score(X, y) > 0.6
    with pytest.raises(NotFittedError):
        kt.TransferFeatures(TINY, weights=None).transform(X)
    with pytest.raises(ValueError, match="fitted on images of shape"):
        features.transform(np.zeros((2, 8, 8, 3)))
    restored = pickle.loads(pickle.dumps(features))
    np.testing.assert_allclose(restored.transform(X), embedded, atol=1e-6)


# --- Persistence ---------------------------------------------------------------


def test_pickle_and_joblib_of_a_fitted_estimator(tmp_path):
    X, y = images_and_labels()
    model = classifier().fit(X, y)
    expected = model.predict_proba(X)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(restored.predict_proba(X), expected, atol=1e-6)
    assert list(restored.classes_) == list(model.classes_)
    joblib.dump(model, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_allclose(loaded.predict_proba(X), expected, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


# --- Weights, warm start, partial fit --------------------------------------------


def test_class_weight_and_sample_weight_reach_training():
    X, y = images_and_labels(30)
    y[:20] = "cat"  # imbalanced: 23 cat, 3 dog, 4 owl
    balanced = classifier(class_weight="balanced")
    balanced.classes_ = np.unique(y)
    encoded = np.searchsorted(balanced.classes_, y)
    weights = balanced._weights(None, encoded)
    for label in ("cat", "dog", "owl"):  # n_samples / (n_classes * count)
        np.testing.assert_allclose(
            weights[y == label], 30 / (3 * (y == label).sum()), rtol=1e-6
        )
    both = balanced._weights(np.full(30, 2.0), encoded)
    np.testing.assert_allclose(both, 2 * weights)
    by_name = classifier(class_weight={"owl": 4.0})
    by_name.classes_ = balanced.classes_
    assert set(by_name._weights(None, encoded)[y == "owl"]) == {4.0}
    # Training uses them: with every dog and owl weighted 0, only cat is learnt.
    zero = np.where(y == "cat", 1.0, 0.0)
    model = classifier(epochs=20).fit(X, y, sample_weight=zero)
    assert set(model.predict(X)) == {"cat"}
    classifier(class_weight="balanced").fit(X, y)
    with pytest.raises(ValueError, match="class_weight names classes"):
        classifier(class_weight={"emu": 2.0}).fit(X, y)


def test_warm_start_and_partial_fit_continue_the_same_network():
    X, y = images_and_labels()
    model = classifier(warm_start=True).fit(X, y)
    network = model.model_
    before = [w.numpy().copy() for w in network.trainable_weights]
    model.fit(X, y)
    assert model.model_ is network
    assert any(
        not np.array_equal(a, w.numpy())
        for a, w in zip(before, network.trainable_weights, strict=True)
    )
    with pytest.raises(ValueError, match="warm_start"):
        model.fit(X[y != "owl"], y[y != "owl"])
    cold = classifier().fit(X, y)
    first = cold.model_
    assert cold.fit(X, y).model_ is not first

    online = classifier()
    with pytest.raises(ValueError, match="classes"):
        online.partial_fit(X[y == "cat"], y[y == "cat"])
    online.partial_fit(X[:6], y[:6], classes=["cat", "dog", "owl"])
    network = online.model_
    online.partial_fit(X[6:12], y[6:12])
    assert online.model_ is network and online.n_iter_ == 1
    with pytest.raises(ValueError, match="not in classes_"):
        online.partial_fit(X[:2], np.array(["emu", "cat"]))


def test_fine_tune_validation_split_and_early_stopping():
    X, y = images_and_labels()
    model = classifier(
        strategy="fine_tune",
        epochs=3,
        freeze_epochs=1,
        validation_split=0.25,
        early_stopping=True,
        patience=1,
    ).fit(X, y)
    assert model.strategy_ == "fine_tune"
    assert "val_loss" in model.history_ and 1 <= model.n_iter_ <= 4
    assert model.model_.backbone.trainable_weights  # unfrozen for the 2nd phase
    full = classifier(strategy="full", epochs=1).fit(X, y)
    assert full.strategy_ == "full" and full.model_.backbone.trainable_weights


# --- Regression -----------------------------------------------------------------


def test_regressor_single_and_multiple_targets():
    X, _ = images_and_labels()
    brightness = X.mean(axis=(1, 2, 3)) / 255.0
    model = regressor(epochs=30).fit(X, brightness)
    assert model.predict(X).shape == (len(X),)
    assert model.score(X, brightness) > 0.0  # better than the mean
    two = regressor(epochs=1).fit(X, np.stack([brightness, -brightness], axis=1))
    assert two.predict(X).shape == (len(X), 2)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(restored.predict(X), model.predict(X), atol=1e-6)


# --- Bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "X, y, error, match",
    [
        (np.zeros((6, 5)), np.arange(6) % 2, ValueError, "Images are not tabular"),
        (np.zeros((6, 4, 4, 2)), np.arange(6) % 2, ValueError, "1 or 3 channels"),
        (np.full((6, 4, 4, 3), "a"), np.arange(6) % 2, ValueError, "dtype"),
        (np.full((6, 4, 4, 3), np.nan), np.arange(6) % 2, ValueError, "NaN"),
        (np.zeros((6, 4, 4, 3)), np.zeros(6), ValueError, "one"),
        (np.zeros((6, 4, 4, 3)), np.arange(5) % 2, ValueError, "inconsistent"),
        (np.zeros((6, 4, 4, 3)), np.linspace(0, 1, 6), ValueError, "continuous"),
    ],
)
def test_bad_input_is_refused_before_training(X, y, error, match):
    with pytest.raises(error, match=match):
        classifier(image_size=SIZE).fit(X, y)


def test_predict_before_fit_and_bad_parameters():
    X, y = images_and_labels(12)
    with pytest.raises(NotFittedError):
        classifier().predict(X)
    with pytest.raises(NotFittedError):
        regressor().predict(X)
    with pytest.raises(ValueError, match="strategy"):
        classifier(strategy="all").fit(X, y)
    with pytest.raises(ValueError, match="epochs"):
        classifier(epochs=0).fit(X, y)
    model = classifier(epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="fitted on images of shape"):
        model.predict(np.zeros((2, 8, 8, 3)))


# --- scikit-learn's conformance checks ----------------------------------------
# Every check below fails for one reason: it fits or predicts on 2-D tabular
# X (n_samples, n_features), and these estimators take images, (n, height,
# width[, channels]); 2-D X is refused with an error that says so. The reason
# for each check names what it passes. The others (parameters, cloning, repr,
# tags, unfitted errors, labels and sample weights checked before X) pass.

_TABULAR = "fits on 2-D tabular X; images are (n, height, width[, channels])"
_REASONS = {
    "check_dict_unchanged": _TABULAR,
    "check_dont_overwrite_parameters": _TABULAR,
    "check_dtype_object": "passes 2-D X of objects/strings; pixels must be numbers",
    "check_estimators_dtypes": "fits 2-D X of each dtype; images are 3-D or 4-D",
    "check_estimators_empty_data_messages": "expects the message for 2-D X with 0 "
    "features; 2-D X is refused as not images",
    "check_estimators_fit_returns_self": _TABULAR,
    "check_estimators_nan_inf": "fits clean 2-D X before the NaN case; NaN in "
    "images is refused (test_bad_input_is_refused_before_training)",
    "check_estimators_overwrite_params": _TABULAR,
    "check_estimators_pickle": _TABULAR + "; pickling is tested on images",
    "check_f_contiguous_array_estimator": _TABULAR,
    "check_fit2d_1feature": "expects the message for 2-D X with 1 feature",
    "check_fit2d_1sample": "expects the message for 2-D X with 1 sample",
    "check_fit2d_predict1d": _TABULAR,
    "check_fit_check_is_fitted": _TABULAR,
    "check_fit_idempotent": _TABULAR,
    "check_fit_score_takes_y": _TABULAR,
    "check_methods_sample_order_invariance": _TABULAR,
    "check_methods_subset_invariance": _TABULAR,
    "check_n_features_in": "n_features_in_ is for 2-D X; images have image_shape_",
    "check_n_features_in_after_fitting": "n_features_in_ is for 2-D X; images "
    "have image_shape_",
    "check_pipeline_consistency": _TABULAR,
    "check_positive_only_tag_during_fit": "passes negative 2-D X",
    "check_readonly_memmap_input": _TABULAR,
    "check_estimators_partial_fit_n_features": "partial_fit on 2-D X",
    "check_sample_weight_equivalence_on_dense_data": _TABULAR,
    "check_sample_weights_list": _TABULAR,
    "check_sample_weights_not_an_array": _TABULAR,
    "check_sample_weights_not_overwritten": _TABULAR,
    "check_sample_weights_shape": _TABULAR,
    "check_supervised_y_2d": _TABULAR,
    "check_class_weight_classifiers": _TABULAR,
    "check_classifier_data_not_an_array": _TABULAR,
    "check_classifiers_classes": _TABULAR + "; string and int labels are tested "
    "on images",
    "check_classifiers_one_label_sample_weights": "fits 2-D X with one class "
    "weighted 0; the one-class error needs the class to be absent from y",
    "check_classifiers_train": _TABULAR,
    "check_regressor_data_not_an_array": _TABULAR,
    "check_regressors_int": _TABULAR,
    "check_regressors_no_decision_function": _TABULAR,
    "check_regressors_train": _TABULAR,
    "check_transformer_data_not_an_array": _TABULAR,
    "check_transformer_general": _TABULAR,
    "check_transformer_preserve_dtypes": "transforms 2-D X of each dtype",
}
_ONLY = {
    "TransferClassifier": {
        "check_class_weight_classifiers",
        "check_classifier_data_not_an_array",
        "check_classifiers_classes",
        "check_classifiers_one_label_sample_weights",
        "check_classifiers_train",
        "check_estimators_partial_fit_n_features",
        "check_sample_weight_equivalence_on_dense_data",
        "check_sample_weights_list",
        "check_sample_weights_not_an_array",
        "check_sample_weights_not_overwritten",
        "check_sample_weights_shape",
        "check_supervised_y_2d",
    },
    "TransferRegressor": {
        "check_estimators_partial_fit_n_features",
        "check_fit2d_1sample",
        "check_regressor_data_not_an_array",
        "check_regressors_int",
        "check_regressors_no_decision_function",
        "check_regressors_train",
        "check_sample_weight_equivalence_on_dense_data",
        "check_sample_weights_list",
        "check_sample_weights_not_an_array",
        "check_sample_weights_not_overwritten",
        "check_sample_weights_shape",
        "check_supervised_y_2d",
    },
    "TransferFeatures": {
        "check_fit2d_1sample",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformer_preserve_dtypes",
    },
}
_SPECIFIC = set().union(*_ONLY.values())


def _expected_failures(estimator):
    name = type(estimator).__name__
    return {
        check: reason
        for check, reason in _REASONS.items()
        if check not in _SPECIFIC or check in _ONLY[name]
    }


@parametrize_with_checks(
    [
        classifier(epochs=1),
        regressor(epochs=1),
        kt.TransferFeatures(TINY, weights=None),
    ],
    expected_failed_checks=_expected_failures,
    xfail_strict=True,
)
def test_sklearn_conformance(estimator, check):
    check(estimator)
