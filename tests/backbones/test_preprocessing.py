import keras
import numpy as np
import pytest

from keras_transfer.backbones import ImagePreprocessing

CASES = [
    ("caffe", keras.applications.resnet50.preprocess_input),
    ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ("torch", keras.applications.densenet.preprocess_input),
    ("none", keras.applications.efficientnet.preprocess_input),
]


@pytest.mark.parametrize("mode,reference", CASES)
def test_matches_keras_preprocess_input(mode, reference):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = reference(x.copy())
    got = keras.ops.convert_to_numpy(ImagePreprocessing(mode)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_round_trip_config():
    layer = ImagePreprocessing("torch")
    clone = ImagePreprocessing.from_config(layer.get_config())
    assert clone.mode == "torch"


def test_bad_mode():
    with pytest.raises(ValueError, match="mode='bgr'"):
        ImagePreprocessing("bgr")
