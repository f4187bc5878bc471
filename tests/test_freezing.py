import logging

import keras
import pytest
from conftest import make_classifier

import keras_transfer as kt
from keras_transfer.backbones import get_spec
from keras_transfer.freezing import layer_groups, set_trainable_groups, weighted_layers


@pytest.mark.parametrize(
    "name,size,expected",
    [
        ("mobilenet_v3_small", 32, ["stem", "block 0", "block 1"]),
        ("efficientnet_b0", 32, ["stem", "block 1", "block 2"]),
        ("resnet50", 32, ["block 1", "block 2", "block 3", "block 4", "block 5"]),
        ("vgg16", 32, ["block 1", "block 2", "block 3", "block 4", "block 5"]),
    ],
)
def test_groups_follow_blocks(name, size, expected):
    spec = get_spec(name)
    network = spec.build((size, size, 3), None)
    groups = layer_groups(network, spec.block_pattern)
    assert [g.name for g in groups][: len(expected)] == expected
    # Every weighted layer is in exactly one group, in order.
    flat = [layer for g in groups for layer in g.layers]
    assert flat == weighted_layers(network)
    if name == "efficientnet_b0":
        assert groups[-1].name == "block 7"
        assert groups[-1].layers[-1].name == "top_bn"


def test_fallback_splits_by_depth():
    network = make_classifier()
    groups = layer_groups(network, None, num_groups=3)
    assert [len(g.layers) for g in groups] == [2, 3, 2]
    assert [g.name for g in groups] == ["depth 1/3", "depth 2/3", "depth 3/3"]
    assert layer_groups(network, r"^nomatch(\d)")[0].name == "depth 1/4"


def test_set_trainable_groups():
    network = make_classifier()
    groups = layer_groups(network)
    set_trainable_groups(network, groups, 2)
    flags = [[layer.trainable for layer in g.layers] for g in groups]
    assert flags == [[False] * len(g.layers) for g in groups[:2]] + [
        [True] * len(g.layers) for g in groups[2:]
    ]
    set_trainable_groups(network, groups, 0)
    assert not network.trainable_weights


def test_choose_strategy_from_labels(caplog):
    labels = ["cat"] * 10 + ["dog"] * 300
    with caplog.at_level(logging.INFO, logger="keras_transfer"):
        decision = kt.choose_strategy(labels)
    assert decision.strategy == "head_only"
    assert decision.examples_per_class == 10
    assert "10 examples per class, fewer than 100" in decision.reason
    assert decision.reason in caplog.text


def test_choose_strategy_threshold_is_configurable():
    assert kt.choose_strategy(num_examples=5000, num_classes=10).strategy == "fine_tune"
    decision = kt.choose_strategy(
        num_examples=5000, num_classes=10, min_examples_per_class=1000
    )
    assert decision.strategy == "head_only" and decision.threshold == 1000
    one_hot = keras.utils.to_categorical([0, 1, 2] * 200)
    assert kt.choose_strategy(one_hot).examples_per_class == 200


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "Pass the labels"),
        ({"y": []}, "length 0"),
        ({"num_examples": 10, "num_classes": 0}, "num_classes=0"),
        ({"y": [0, 1], "min_examples_per_class": 0}, "min_examples_per_class=0"),
    ],
)
def test_choose_strategy_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kt.choose_strategy(**kwargs)
