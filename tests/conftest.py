import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SIZE = 16


def make_classifier(num_classes=5, seed=0, name="tiny_classifier"):
    """A tiny functional CNN with BatchNorm and a classifier on top."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv3")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.5, name="top_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
        x
    )
    model = keras.Model(inputs, outputs, name=name)
    # Non-trivial BatchNorm statistics, as a pretrained network has.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.5, 0.5, channels))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, channels))
    return model


@pytest.fixture
def classifier():
    return make_classifier()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, size=(24, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture
def labels():
    return np.arange(24) % 3


def weights_of(layer):
    return [w.numpy().copy() for w in layer.weights]


def changed(before, layer):
    return [
        not np.array_equal(a, w.numpy())
        for a, w in zip(before, layer.weights, strict=True)
    ]


@pytest.fixture(scope="session", autouse=True)
def isolated_keras_home(tmp_path_factory):
    """Keeps downloads and converted weights of the tests out of ~/.keras."""
    from keras.src.backend import config as keras_config

    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_config, "_KERAS_DIR", str(home))
        yield home


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every URL fetch goes to a closed local port; an empty Keras home."""
    from keras.src.backend import config as keras_config

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # Keras reads $KERAS_HOME once at import; point its cache at tmp_path.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    (tmp_path / "models").mkdir()
    return tmp_path
