"""scikit-learn estimators: transfer learning as `fit(X, y)` / `predict(X)`.

`TransferClassifier` and `TransferRegressor` fine-tune a `TransferModel`;
`TransferFeatures` turns images into pretrained embeddings for any
scikit-learn model. They follow scikit-learn's rules (`__init__` only stores,
fitted attributes end in `_`, `fit` returns self), carry `__sklearn_tags__`
(so `is_classifier` is True and `cross_val_score` stratifies), clone, and
pickle with their fitted network.
"""

from __future__ import annotations

import io
import numbers
import os
import tempfile
import zipfile

import keras
import numpy as np
import scipy.sparse
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    RegressorMixin,
    TransformerMixin,
)
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_consistent_length, check_is_fitted

from keras_transfer.data import resize_images
from keras_transfer.freezing import choose_strategy
from keras_transfer.model import TransferModel

ROUTES = ("model__", "compile__", "fit__")
STRATEGIES = ("auto", "head_only", "fine_tune", "full")


def _routed(params: dict, route: str) -> dict:
    return {k[len(route) :]: v for k, v in params.items() if k.startswith(route)}


def check_images(X, *, name: str = "X") -> np.ndarray:
    """Validates an image batch; returns float32 `(n, H, W, C)`.

    Accepts `(n, H, W, C)` with C 1 or 3, or grayscale `(n, H, W)`; values are
    pixel intensities (0-255, as the models expect).
    """
    if scipy.sparse.issparse(X):
        raise TypeError(
            f"Sparse data is not supported: {name} must be a dense array of images "
            "(n_samples, height, width[, channels]). Received: a sparse matrix of "
            f"shape {X.shape}"
        )
    if hasattr(X, "to_numpy"):  # pandas
        X = X.to_numpy()
    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} holds complex numbers.")
    if X.dtype.kind not in "biuf":
        raise ValueError(
            f"Expected {name} to hold numbers (pixel values 0-255). Received: "
            f"{name} of dtype {X.dtype}"
        )
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(f"Input {name} contains NaN or infinity.")
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim != 4 or X.shape[-1] not in (1, 3):
        raise ValueError(
            f"Expected {name} to be images of shape (n_samples, height, width, "
            f"channels) with 1 or 3 channels, or grayscale (n_samples, height, "
            f"width). Received: {name} of shape {X.shape}. Images are not tabular "
            "data: reshape flat pixel rows to images first."
        )
    if len(X) == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}).")
    return X.astype("float32", copy=False)


def _resize(X: np.ndarray, size) -> np.ndarray:
    return X if size is None else resize_images(X, size)


def _model_to_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as handle:
            return handle.read()


def _model_from_bytes(data: bytes) -> keras.Model:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError("The pickled network is not a .keras archive: corrupted.")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        return keras.saving.load_model(path)


class _KerasState:
    """Pickles the fitted Keras model as `.keras` bytes."""

    _pickled_models = ("model_",)

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in self._pickled_models:
            if key in state:
                state[key] = _model_to_bytes(state[key])
        return state

    def __setstate__(self, state):
        for key in self._pickled_models:
            if isinstance(state.get(key), bytes):
                state[key] = _model_from_bytes(state[key])
        self.__dict__.update(state)


class _RoutedParams:
    """`model__*`, `compile__*` and `fit__*` parameters, SciKeras style."""

    def _store_routed(self, kwargs: dict) -> None:
        # Stored as given (scikit-learn's rule: __init__ only stores); `fit`
        # refuses names without a route.
        for key, value in kwargs.items():
            setattr(self, key, value)

    def _extra_params(self) -> list[str]:
        named = set(self._get_param_names())
        return [
            key
            for key in self.__dict__
            if key not in named and not key.startswith("_") and not key.endswith("_")
        ]

    def _check_routed(self) -> None:
        unknown = [k for k in self._extra_params() if not k.startswith(ROUTES)]
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected parameters {unknown}; extra "
                f"parameters must start with one of {ROUTES} (e.g. "
                "model__pooling='max', compile__layer_decay=0.75, fit__shuffle=False)."
            )

    def get_params(self, deep=True):
        params = super().get_params(deep=deep)
        params.update({key: getattr(self, key) for key in self._extra_params()})
        return params

    def set_params(self, **params):
        routed = {k: v for k, v in params.items() if k.startswith(ROUTES)}
        for key, value in routed.items():
            setattr(self, key, value)
        return super().set_params(
            **{k: v for k, v in params.items() if k not in routed}
        )


class _ImageInput:
    """Checked, resized images; after fitting, of the fitted shape."""

    def _images(self, X, *, fitted: bool) -> np.ndarray:
        X = _resize(check_images(X), self.image_size)
        expected = getattr(self, "image_shape_", None) if fitted else None
        if expected is not None and X.shape[1:] != expected:
            raise ValueError(
                f"{type(self).__name__} was fitted on images of shape {expected}, "
                f"but X has images of shape {X.shape[1:]}. Pass images of that "
                "shape, or set image_size to resize them."
            )
        return X


class _TransferEstimator(_ImageInput, _KerasState, _RoutedParams, BaseEstimator):
    """Shared fit/predict of `TransferClassifier` and `TransferRegressor`."""

    _task = "multiclass"

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="imagenet",
        image_size=None,
        hidden_units=(),
        dropout=0.2,
        strategy="auto",
        epochs=10,
        freeze_epochs=1,
        learning_rate=None,
        batch_size=32,
        validation_split=0.0,
        early_stopping=False,
        patience=3,
        random_state=None,
        warm_start=False,
        verbose=0,
        **kwargs,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.strategy = strategy
        self.epochs = epochs
        self.freeze_epochs = freeze_epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.validation_split = validation_split
        self.early_stopping = early_stopping
        self.patience = patience
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self._store_routed(kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.random_state is None
        return tags

    # --- Checks ---------------------------------------------------------------

    def _check_params(self):
        self._check_routed()
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"Expected `strategy` to be one of {STRATEGIES}. Received: "
                f"strategy={self.strategy!r}"
            )
        for name, minimum in (("epochs", 1), ("freeze_epochs", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or value < minimum
            ):
                raise ValueError(
                    f"Expected `{name}` to be an int >= {minimum}. Received: "
                    f"{name}={value!r}"
                )
        split = self.validation_split
        if not isinstance(split, numbers.Real) or not 0 <= split < 1:
            raise ValueError(
                f"Expected `validation_split` in [0, 1). Received: "
                f"validation_split={split!r}"
            )

    def _continues(self) -> bool:
        return bool(self.warm_start) and hasattr(self, "model_")

    # --- Fitting --------------------------------------------------------------

    def _build(self, image_shape, seed):
        model = TransferModel(
            self.backbone,
            num_classes=self._num_outputs(),
            input_shape=image_shape,
            weights=self.weights,
            task=self._task,
            hidden_units=self.hidden_units,
            dropout=self.dropout,
            class_names=self._class_names(),
            seed=seed,
            **_routed(self.get_params(), "model__"),
        )
        model.compile(
            learning_rate=self.learning_rate,
            **_routed(self.get_params(), "compile__"),
        )
        return model

    def _train(self, X, targets, sample_weight, stratify, *, partial):
        """Builds the network unless it continues, then trains it."""
        self._check_params()
        seed = None
        if self.random_state is not None:
            seed = int(check_random_state(self.random_state).randint(2**31 - 1))
            keras.utils.set_random_seed(seed)
        if not (partial and hasattr(self, "model_")) and not self._continues():
            self.image_shape_ = X.shape[1:]
            self.model_ = self._build(X.shape[1:], seed)
        model = self.model_
        kwargs = dict(batch_size=self.batch_size, verbose=self.verbose)
        kwargs.update(_routed(self.get_params(), "fit__"))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if partial:
            history = model.fit(
                X,
                targets,
                epochs=1,
                sample_weight=sample_weight,
                callbacks=callbacks,
                **kwargs,
            )
            self._record(history)
            return self
        if self.validation_split:
            train, held_out = train_test_split(
                np.arange(len(X)),
                test_size=self.validation_split,
                random_state=seed,
                stratify=stratify,
            )
            kwargs["validation_data"] = (X[held_out], targets[held_out])
            X, targets = X[train], targets[train]
            if sample_weight is not None:
                sample_weight = sample_weight[train]
            if stratify is not None:
                stratify = stratify[train]
        if self.early_stopping:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss" if self.validation_split else "loss",
                    patience=self.patience,
                    restore_best_weights=True,
                )
            )
        strategy = self.strategy
        if strategy == "auto":
            decision = (
                choose_strategy(stratify)
                if stratify is not None
                else choose_strategy(num_examples=len(X), num_classes=1)
            )
            strategy = decision.strategy
        kwargs.update(sample_weight=sample_weight, callbacks=callbacks)
        if strategy == "fine_tune" and not self._continues():
            history = model.fine_tune(
                X,
                targets,
                epochs=self.epochs,
                freeze_epochs=self.freeze_epochs,
                **kwargs,
            )
        else:
            if strategy == "head_only":
                model.freeze_backbone()
            elif strategy in ("full", "fine_tune"):
                model.unfreeze()
            history = model.fit(X, targets, epochs=self.epochs, **kwargs)
        self.strategy_ = strategy
        self._record(history)
        return self

    def _record(self, history):
        self.history_ = dict(history.history)
        self.n_iter_ = len(next(iter(self.history_.values()), []))

    @staticmethod
    def _sample_weight(sample_weight, n):
        if sample_weight is None:
            return None
        sample_weight = np.asarray(sample_weight, dtype="float32")
        if sample_weight.shape != (n,):
            raise ValueError(
                f"Expected sample_weight of shape ({n},). Received: shape "
                f"{sample_weight.shape}"
            )
        if not np.isfinite(sample_weight).all() or (sample_weight < 0).any():
            raise ValueError("Sample weights must be finite and non-negative.")
        if not sample_weight.any():
            raise ValueError(
                "Sample weights must contain at least one non-zero number."
            )
        return sample_weight

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict(
            self._images(X, fitted=True), batch_size=self.batch_size, verbose=0
        )


class TransferClassifier(ClassifierMixin, _TransferEstimator):
    """A scikit-learn classifier that fine-tunes a pretrained image network.

    `fit(X, y)` builds a `TransferModel` (backbone, new head) for the classes
    in `y` and trains it with the chosen recipe; `predict` returns labels of
    the type of `y` (strings, ints, booleans), `predict_proba` one column per
    class of `classes_`.

    Args:
        backbone: str. A backbone name (see `keras_transfer.list_backbones()`)
            or a `.keras` model file. Default: EfficientNet-Lite0, offline.
        weights: str or None. `"imagenet"`, None or a local weights file.
        image_size: int, (height, width) or None. Resize X to this size first;
            None uses the images' own size (which the backbone must accept).
        hidden_units: tuple of int. Hidden Dense layers of the head.
        dropout: float. Dropout in the head.
        strategy: str. `"auto"` (head only with fewer than 100 examples in the
            rarest class, else fine_tune: see `choose_strategy`), `"head_only"`
            (frozen backbone), `"fine_tune"` (`freeze_epochs` of head, then
            `epochs` of everything) or `"full"` (everything from the start).
        epochs: int. Training epochs (after the head phase for fine_tune).
        freeze_epochs: int. Head-only epochs before fine-tuning.
        learning_rate: float or None. None: 1e-3 for the head, 1e-4 once the
            backbone trains.
        batch_size: int.
        validation_split: float. A stratified share of the training data held
            out for validation (and early stopping).
        early_stopping: bool. Stop when the validation loss (or, without
            validation, the training loss) has not improved for `patience`
            epochs, and keep the best weights.
        patience: int.
        random_state: int, RandomState or None. Seeds the head, the
            validation split and training.
        warm_start: bool. A second `fit` continues training the same network
            (`epochs` more, the backbone trainable as it is) instead of a new
            one; the classes must be the same.
        verbose: int. Keras' progress output.
        class_weight: None, "balanced" or dict {class label: weight}.
        **kwargs: `model__<arg>` for `TransferModel` (e.g. `model__pooling`),
            `compile__<arg>` for its `compile` (`compile__layer_decay`,
            `compile__optimizer`), `fit__<arg>` for Keras' `fit`
            (`fit__shuffle`). They are parameters, so GridSearchCV can tune them.

    Attributes:
        classes_, model_ (the fitted `TransferModel`), history_ (Keras'
        history dict), n_iter_ (epochs run), image_shape_, strategy_ (what was
        trained: "head_only", "fine_tune" or "full").

    `partial_fit(X, y, classes=None)` trains the same network for one epoch
    on the given batch, as it is (the first call builds it with the backbone
    frozen; pass every class in `classes` then if the batch lacks some).
    """

    # scikit-learn reads parameters from the signature: all are spelled out.
    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="imagenet",
        image_size=None,
        hidden_units=(),
        dropout=0.2,
        strategy="auto",
        epochs=10,
        freeze_epochs=1,
        learning_rate=None,
        batch_size=32,
        validation_split=0.0,
        early_stopping=False,
        patience=3,
        random_state=None,
        warm_start=False,
        verbose=0,
        class_weight=None,
        **kwargs,
    ):
        super().__init__(
            backbone,
            weights=weights,
            image_size=image_size,
            hidden_units=hidden_units,
            dropout=dropout,
            strategy=strategy,
            epochs=epochs,
            freeze_epochs=freeze_epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            validation_split=validation_split,
            early_stopping=early_stopping,
            patience=patience,
            random_state=random_state,
            warm_start=warm_start,
            verbose=verbose,
            **kwargs,
        )
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None):
        y = self._labels(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(
                "The number of classes has to be greater than one; got 1 class "
                f"({classes[0]!r}). Pass labels of at least two classes."
            )
        weight = self._sample_weight(sample_weight, len(y))
        X = self._images(X, fitted=self._continues())
        check_consistent_length(X, y)
        if self._continues() and not np.array_equal(classes, self.classes_):
            raise ValueError(
                f"warm_start continues the network fitted for classes "
                f"{list(self.classes_)}; y has {list(classes)}. Set "
                "warm_start=False to train a new one."
            )
        self._check_class_weight(classes)
        self.classes_ = classes
        encoded = np.searchsorted(classes, y)
        return self._train(
            X,
            encoded,
            self._weights(weight, encoded),
            encoded,
            partial=False,
        )

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        fitted = hasattr(self, "model_")
        y = self._labels(y)
        X = self._images(X, fitted=fitted)
        check_consistent_length(X, y)
        if not fitted:
            known = np.unique(y if classes is None else np.asarray(classes))
            if len(known) < 2:
                raise ValueError(
                    "The first partial_fit needs at least two classes; pass them "
                    f"all in `classes`. Received: classes={classes!r}"
                )
            self._check_class_weight(known)
            self.classes_ = known
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(
                f"y has classes {list(unknown)} not in classes_ "
                f"{list(self.classes_)}; pass all classes in the first call."
            )
        encoded = np.searchsorted(self.classes_, y)
        return self._train(
            X,
            encoded,
            self._weights(sample_weight, encoded),
            None,
            partial=True,
        )

    def predict_proba(self, X):
        return self._predict_raw(X)

    def predict(self, X):
        probabilities = self.predict_proba(X)  # checks that it is fitted
        return self.classes_[probabilities.argmax(axis=1)]

    @staticmethod
    def _labels(y):
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None.")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "multiclass"):
            raise ValueError(
                f"Unknown label type: {kind}. TransferClassifier takes one label "
                "per image (strings, ints or booleans); use TransferRegressor for "
                "continuous targets."
            )
        return y

    def _num_outputs(self):
        return len(self.classes_)

    def _class_names(self):
        return [str(c) for c in self.classes_]

    def _check_class_weight(self, classes):
        weight = self.class_weight
        if weight is None or (isinstance(weight, str) and weight == "balanced"):
            return
        if not isinstance(weight, dict):
            raise ValueError(
                "Expected class_weight to be None, 'balanced' or a dict "
                f"{{class: weight}}. Received: class_weight={weight!r}"
            )
        unknown = [k for k in weight if k not in set(classes.tolist())]
        if unknown:
            raise ValueError(
                f"class_weight names classes {unknown} that are not in y "
                f"({list(classes)})."
            )

    def _weights(self, sample_weight, encoded):
        """Sample weights times class weights (Keras takes only one of them)."""
        weights = self._sample_weight(sample_weight, len(encoded))
        if self.class_weight is None:
            return weights
        per_class = np.ones(len(self.classes_), dtype="float32")
        if isinstance(self.class_weight, str):  # "balanced", over this y
            present = np.unique(encoded)
            per_class[present] = compute_class_weight(
                "balanced", classes=present, y=encoded
            )
        else:
            for i, label in enumerate(self.classes_.tolist()):
                per_class[i] = self.class_weight.get(label, 1.0)
        by_example = per_class[encoded]
        return by_example if weights is None else weights * by_example


class TransferRegressor(RegressorMixin, _TransferEstimator):
    """A scikit-learn regressor on a pretrained image network.

    Like `TransferClassifier` (same parameters, without `class_weight`), with
    a linear output per target and mean squared error. `y` is `(n,)` or
    `(n, n_targets)`; `predict` returns the same shape. Targets are used as
    given: scale them to about unit size for the default learning rates.
    `strategy="auto"` decides from the number of examples (fewer than 100:
    head only).
    """

    _task = "regression"

    def fit(self, X, y, sample_weight=None):
        y = self._targets(y)
        weight = self._sample_weight(sample_weight, len(y))
        X = self._images(X, fitted=self._continues())
        check_consistent_length(X, y)
        outputs = 1 if y.ndim == 1 else y.shape[1]
        if self._continues() and outputs != self.n_outputs_:
            raise ValueError(
                f"warm_start continues the network fitted for {self.n_outputs_} "
                f"targets; y has {outputs}. Set warm_start=False."
            )
        self.n_outputs_ = outputs
        return self._train(X, y, weight, None, partial=False)

    def partial_fit(self, X, y, sample_weight=None):
        fitted = hasattr(self, "model_")
        y = self._targets(y)
        X = self._images(X, fitted=fitted)
        check_consistent_length(X, y)
        if not fitted:
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        return self._train(
            X,
            y,
            self._sample_weight(sample_weight, len(y)),
            None,
            partial=True,
        )

    def predict(self, X):
        predictions = self._predict_raw(X)
        return predictions[:, 0] if self.n_outputs_ == 1 else predictions

    @staticmethod
    def _targets(y):
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None.")
        y = np.asarray(y)
        if y.dtype.kind == "c":
            raise ValueError("Complex data not supported: y holds complex numbers.")
        if y.dtype.kind not in "biuf" or y.ndim not in (1, 2):
            raise ValueError(
                "Expected y to be numbers of shape (n_samples,) or (n_samples, "
                f"n_targets). Received: y of dtype {y.dtype} and shape {y.shape}"
            )
        y = y.astype("float32")
        if not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity.")
        return y

    def _num_outputs(self):
        return self.n_outputs_

    def _class_names(self):
        return None


class TransferFeatures(
    _ImageInput,
    _KerasState,
    _RoutedParams,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Images to pretrained embeddings: a scikit-learn transformer.

    The backbone stays frozen (BatchNorm in inference mode); `transform`
    returns its pooled features, one row per image. With a linear model on
    top, the cheapest strong baseline of transfer learning:

    >>> make_pipeline(TransferFeatures(image_size=128), LogisticRegression())

    Args:
        backbone: str. A backbone name or a `.keras` model file.
        weights: str or None. `"imagenet"`, None or a local weights file.
        image_size: int, (height, width) or None. Resize images first.
        pooling: str. `"avg"`, `"max"` or `"flatten"` for spatial features.
        batch_size: int. Images per forward pass.
        **kwargs: `model__<arg>` for `TransferModel` (e.g. `model__preprocessing`).

    Attributes:
        model_: the feature extractor (a `keras.Model`), image_shape_,
        n_features_out_ (the embedding size).
    """

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="imagenet",
        image_size=None,
        pooling="avg",
        batch_size=32,
        **kwargs,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.pooling = pooling
        self.batch_size = batch_size
        self._store_routed(kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        return tags

    def fit(self, X, y=None):
        self._check_routed()
        X = self._images(X, fitted=False)
        model = TransferModel(
            self.backbone,
            num_classes=2,
            input_shape=X.shape[1:],
            weights=self.weights,
            pooling=self.pooling,
            dropout=0.0,
            **_routed(self.get_params(), "model__"),
        )
        features = model.get_layer("predictions").input
        self.model_ = keras.Model(model.inputs[0], features, name="features")
        self.image_shape_ = X.shape[1:]
        self.n_features_out_ = int(features.shape[-1])
        return self

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def transform(self, X):
        check_is_fitted(self, "model_")
        X = self._images(X, fitted=True)
        return self.model_.predict(X, batch_size=self.batch_size, verbose=0)
