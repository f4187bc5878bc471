import keras
import numpy as np
import pytest
from conftest import SIZE, make_classifier

from keras_transfer.backbones import find_output_layer, pop_top

# One representative per Keras Applications family, at a small input size.
FAMILIES = [
    ("ConvNeXtTiny", 32),
    ("DenseNet121", 32),
    ("EfficientNetB0", 32),
    ("EfficientNetV2B0", 32),
    ("InceptionResNetV2", 75),
    ("InceptionV3", 75),
    ("MobileNet", 32),
    ("MobileNetV2", 32),
    ("NASNetMobile", 32),
    ("ResNet50", 32),
    ("ResNet50V2", 32),
    ("Xception", 71),
]


def _apps(constructor, size):
    build = getattr(keras.applications, constructor)
    shape = (size, size, 3)
    keras.utils.set_random_seed(1)
    with_top = build(include_top=True, weights=None, input_shape=shape, classes=7)
    without_top = build(
        include_top=False, weights=None, input_shape=shape, pooling="avg"
    )
    return with_top, without_top


@pytest.mark.slow
@pytest.mark.parametrize("constructor,size", FAMILIES)
def test_cut_equals_network_built_without_top(constructor, size):
    with_top, without_top = _apps(constructor, size)
    cut = pop_top(with_top)
    top = find_output_layer(with_top)
    assert top.count_params() == 7 * (cut.output.shape[-1] + 1)  # the 7-class layer
    assert all(layer is not top for layer in cut.layers)
    without_top.set_weights(cut.get_weights())  # same weights, same order
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = keras.ops.convert_to_numpy(cut(x, training=False))
    reference = keras.ops.convert_to_numpy(without_top(x, training=False))
    # MobileNet v1 pools with keepdims: (n, 1, 1, c) features.
    np.testing.assert_allclose(
        features.reshape(len(x), -1), reference, rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_cut_vgg_keeps_pretrained_fully_connected_layers():
    """VGG's top is flatten -> fc1 -> fc2 -> predictions: only `predictions`
    is the output layer; fc1 and fc2 are pretrained hidden layers that stay."""
    with_top, _ = _apps("VGG16", 32)
    without_top = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    cut = pop_top(with_top)
    assert find_output_layer(with_top).name == "predictions"
    without_top.set_weights(cut.get_weights()[: len(without_top.weights)])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    flat = keras.ops.reshape(without_top(x), (2, -1))
    reference = with_top.get_layer("fc2")(with_top.get_layer("fc1")(flat))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cut(x)),
        keras.ops.convert_to_numpy(reference),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.slow
@pytest.mark.parametrize("constructor", ["MobileNetV3Small", "MobileNetV3Large"])
def test_cut_mobilenet_v3_convolutional_top(constructor):
    """The top is pooling -> conv_2 -> hard_silu -> dropout -> 1x1 conv `logits`:
    the cut keeps the pretrained 1x1 conv_2 features and drops `logits`."""
    with_top, without_top = _apps(constructor, 32)
    assert find_output_layer(with_top).name == "logits"
    cut = pop_top(with_top)
    assert cut.output.shape[-1] == with_top.get_layer("conv_2").filters
    without_top.set_weights(cut.get_weights()[: len(without_top.weights)])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    pooled = without_top(x, training=False)[:, None, None, :]
    conv_2 = with_top.get_layer("conv_2")
    reference = keras.activations.hard_silu(conv_2(pooled))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cut(x, training=False)),
        keras.ops.convert_to_numpy(reference),
        rtol=1e-5,
        atol=1e-5,
    )


def test_cut_functional_skips_old_dropout(classifier):
    cut = pop_top(classifier)
    assert cut.output.shape == (None, 8)
    assert "top_dropout" not in [layer.name for layer in cut.layers]
    assert "predictions" not in [layer.name for layer in cut.layers]


def test_cut_sequential():
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
            keras.layers.Softmax(),
        ]
    )
    assert find_output_layer(model).name == "logits"
    assert pop_top(model).output.shape == (None, 14 * 14 * 4)


def test_cut_at_name_index_and_whole(classifier):
    assert pop_top(classifier, cut_at="conv2").output.shape == (None, 8, 8, 8)
    assert pop_top(classifier, cut_at=-1).output.shape == (None, 5)
    by_index = pop_top(classifier, cut_at=3)  # 0 input, 1 rescale, 2 conv1, 3 bn1
    assert by_index.layers[-1].name == "bn1"


def test_cut_errors(classifier):
    with pytest.raises(ValueError, match="no layer named 'conv9'.*conv1"):
        pop_top(classifier, cut_at="conv9")
    with pytest.raises(ValueError, match="out of range.*cut_at=99"):
        pop_top(classifier, cut_at=99)
    with pytest.raises(TypeError, match="cut_at=1.5"):
        pop_top(classifier, cut_at=1.5)
    features = pop_top(classifier, cut_at="bn3")
    with pytest.raises(ValueError, match="'bn3' \\(BatchNormalization\\).*cut_at"):
        find_output_layer(features)


def test_multiple_outputs_need_cut_at():
    inputs = keras.Input((4,))
    model = keras.Model(
        inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)]
    )
    with pytest.raises(ValueError, match="2 outputs.*cut_at"):
        pop_top(model)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="no symbolic graph"):
        pop_top(net)


def test_cut_shares_weights_with_original():
    model = make_classifier()
    cut = pop_top(model)
    assert cut.get_layer("conv1") is model.get_layer("conv1")
