"""ImageNet class names shipped with the package, and the decoder."""

import numpy as np
import pytest

import keras_transfer as kt


def test_class_names():
    names = kt.imagenet_class_names()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench"
    assert names[285] == "Egyptian cat"
    assert names[967] == "espresso"
    assert names[999] == "toilet tissue"


def test_decode_orders_by_score():
    scores = np.zeros((2, 1000), "float32")
    scores[0, [285, 967, 3]] = [0.2, 0.7, 0.1]
    scores[1, 999] = 5.0
    decoded = kt.decode_imagenet(scores, top=2)
    assert decoded[0] == [
        ("n07920052", "espresso", pytest.approx(0.7)),
        ("n02124075", "Egyptian cat", pytest.approx(0.2)),
    ]
    assert decoded[1][0][1] == "toilet tissue"
    assert kt.decode_imagenet(scores[1])[0][0][2] == 5.0  # one image, logits


@pytest.mark.parametrize(
    "scores, top, message",
    [
        (np.zeros((1, 10)), 5, r"shape \(1, 10\)"),
        (np.zeros((1, 1000)), 0, "Received: 0"),
        (np.zeros((1, 1000)), 1001, "Received: 1001"),
    ],
)
def test_decode_rejects_bad_input(scores, top, message):
    with pytest.raises(ValueError, match=message):
        kt.decode_imagenet(scores, top=top)
