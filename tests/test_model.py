import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SIZE, changed, make_classifier, weights_of

import keras_transfer as kt


def build(backbone=None, **kwargs):
    kwargs.setdefault("num_classes", 3)
    kwargs.setdefault("seed", 0)
    return kt.TransferModel(backbone or make_classifier(), **kwargs)


def batchnorm_stats(model):
    return {
        layer.name: (
            layer.moving_mean.numpy().copy(),
            layer.moving_variance.numpy().copy(),
        )
        for layer in kt.freezing.weighted_layers(model.backbone)
        if isinstance(layer, keras.layers.BatchNormalization)
    }


def assert_stats_equal(before, model):
    after = batchnorm_stats(model)
    assert before.keys() == after.keys() and before
    for name, (mean, var) in before.items():
        np.testing.assert_array_equal(mean, after[name][0], err_msg=name)
        np.testing.assert_array_equal(var, after[name][1], err_msg=name)


def test_top_is_replaced_by_fresh_output_layer(classifier):
    model = build(classifier, num_classes=4)
    out = model.get_layer("predictions")
    assert out.units == 4
    assert out.kernel.shape == (8, 4)
    np.testing.assert_array_equal(out.bias.numpy(), np.zeros(4))
    assert not any(layer.name == "predictions" for layer in model.backbone.model.layers)
    # Seeded: same seed, same initial head; another seed, another head.
    same = build(make_classifier(), num_classes=4, seed=0).get_layer("predictions")
    other = build(make_classifier(), num_classes=4, seed=1).get_layer("predictions")
    np.testing.assert_array_equal(out.kernel.numpy(), same.kernel.numpy())
    assert not np.allclose(out.kernel.numpy(), other.kernel.numpy())


def test_backbone_keeps_pretrained_weights(classifier):
    model = build(classifier)
    np.testing.assert_array_equal(
        model.backbone.model.get_layer("conv2").kernel.numpy(),
        classifier.get_layer("conv2").kernel.numpy(),
    )


def test_frozen_fit_trains_head_only(images, labels):
    model = build(hidden_units=(6,))
    model.compile()
    backbone_before = weights_of(model.backbone)
    head_before = weights_of(model.get_layer("predictions"))
    stats = batchnorm_stats(model)
    model.fit(images, labels, epochs=2, batch_size=8, verbose=0)
    assert not any(changed(backbone_before, model.backbone))
    assert all(changed(head_before, model.get_layer("predictions")))
    assert_stats_equal(stats, model)


def test_unfreeze_trains_backbone_but_keeps_batchnorm_statistics(images, labels):
    model = build()
    model.compile()
    model.unfreeze()
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-4)
    before = weights_of(model.backbone.model.get_layer("conv1"))
    stats = batchnorm_stats(model)
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert all(changed(before, model.backbone.model.get_layer("conv1")))
    assert_stats_equal(stats, model)  # batchnorm="frozen": inference mode


def test_batchnorm_trainable_updates_statistics(images, labels):
    model = build(batchnorm="trainable")
    model.unfreeze()
    model.compile()
    stats = batchnorm_stats(model)
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    moved = [
        not np.array_equal(mean, batchnorm_stats(model)[name][0])
        for name, (mean, _) in stats.items()
    ]
    assert all(moved)


def test_predict_never_moves_statistics(images):
    model = build(batchnorm="trainable")
    model.unfreeze()
    stats = batchnorm_stats(model)
    model.predict(images, verbose=0)
    assert_stats_equal(stats, model)


def test_unfreeze_top_group_changes_only_top_group(images, labels):
    model = build()
    groups = model.layer_groups
    assert len(groups) == 4  # split by depth: a user model has no block names
    model.compile()
    model.unfreeze(top_groups=1)
    befores = [[weights_of(layer) for layer in g.layers] for g in groups]
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    for index, (group, before) in enumerate(zip(groups, befores, strict=True)):
        moved = any(
            any(changed(b, layer))
            for b, layer in zip(before, group.layers, strict=True)
        )
        assert moved == (index == len(groups) - 1), group


def test_unfreeze_without_recompile_takes_effect(images, labels):
    """`unfreeze()` after `compile()` recompiles: no silent no-op in `fit`."""
    model = build()
    model.compile()
    model.fit(images, labels, epochs=1, verbose=0)
    model.unfreeze()
    before = weights_of(model.backbone.model.get_layer("conv1"))
    model.fit(images, labels, epochs=1, verbose=0)
    assert all(changed(before, model.backbone.model.get_layer("conv1")))
    model.freeze_backbone()
    before = weights_of(model.backbone)
    model.fit(images, labels, epochs=1, verbose=0)
    assert not any(changed(before, model.backbone))


def test_bad_top_groups():
    model = build()
    with pytest.raises(ValueError, match="between 0 and 4.*top_groups=5"):
        model.unfreeze(top_groups=5)
    with pytest.raises(TypeError, match="top_groups='2'"):
        model.unfreeze(top_groups="2")


def test_save_load_keeps_predictions_and_trainable_state(tmp_path, images, labels):
    model = build(hidden_units=(6,))
    model.compile()
    model.unfreeze(top_groups=2)
    model.fit(images, labels, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is kt.TransferModel
    np.testing.assert_allclose(
        model.predict(images, verbose=0), loaded.predict(images, verbose=0), atol=1e-6
    )
    flags = [layer.trainable for layer in kt.freezing.weighted_layers(model)]
    loaded_flags = [layer.trainable for layer in kt.freezing.weighted_layers(loaded)]
    assert flags == loaded_flags and True in flags and False in flags
    assert [w.path for w in loaded.trainable_weights] == [
        w.path for w in model.trainable_weights
    ]
    # Compiled state comes back too: training continues without compile().
    assert loaded.compiled
    loaded.fit(images, labels, epochs=1, verbose=0)


def test_save_load_frozen_backbone(tmp_path):
    model = build()
    path = str(tmp_path / "frozen.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.trainable is False
    assert len(loaded.trainable_weights) == len(model.trainable_weights) == 2


def test_named_backbone_round_trip(tmp_path):
    model = kt.TransferModel(
        "mobilenet_v3_small", num_classes=2, input_shape=(32, 32, 3), weights=None
    )
    assert model.backbone.spec_name == "mobilenet_v3_small"
    assert [g.name for g in model.layer_groups][:2] == ["stem", "block 0"]
    path = str(tmp_path / "named.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
    np.testing.assert_allclose(
        model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    )


def test_grayscale_input_with_rgb_backbone():
    gray = build(input_shape=(SIZE, SIZE, 1))
    rgb = build()
    rgb.set_weights(gray.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 1)).astype("float32")
    np.testing.assert_allclose(
        gray.predict(x, verbose=0),
        rgb.predict(np.repeat(x, 3, axis=-1), verbose=0),
        atol=1e-6,
    )


def test_resize_inside_the_model(images):
    model = build(input_shape=(24, 24, 3), resize=True)
    assert model.get_layer("resize").output.shape == (None, SIZE, SIZE, 3)
    assert model.predict(np.zeros((2, 24, 24, 3)), verbose=0).shape == (2, 3)
    with pytest.raises(ValueError, match="16x16.*resize=True"):
        build(input_shape=(24, 24, 3))


@pytest.mark.parametrize(
    "task,num_classes,activation,loss",
    [
        ("multiclass", 3, "softmax", "sparse_categorical_crossentropy"),
        ("binary", 1, "sigmoid", "binary_crossentropy"),
        ("multilabel", 4, "sigmoid", "binary_crossentropy"),
        ("regression", 2, "linear", "mean_squared_error"),
    ],
)
def test_tasks(task, num_classes, activation, loss, images):
    model = build(task=task, num_classes=num_classes)
    assert model.get_layer("predictions").activation.__name__ == activation
    model.compile()
    assert model.loss == loss
    y = np.random.default_rng(0).integers(0, 2, (len(images), num_classes))
    if task == "multiclass":
        y = y[:, 0]
    history = model.fit(images, y.astype("float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_classes": 0}, ValueError, "num_classes=0"),
        ({"num_classes": -2}, ValueError, "num_classes=-2"),
        ({"num_classes": 2.5}, TypeError, "num_classes=2.5"),
        ({"num_classes": "3"}, TypeError, "num_classes='3'"),
        ({"num_classes": 1}, ValueError, "task='binary'"),
        ({"input_shape": (SIZE, SIZE)}, ValueError, r"input_shape=\(16, 16\)"),
        ({"input_shape": (SIZE, SIZE, 2)}, ValueError, "1 \\(grayscale"),
        ({"input_shape": (SIZE, SIZE, 4)}, ValueError, r"input_shape=\(16, 16, 4\)"),
        ({"task": "ranking"}, ValueError, "task='ranking'"),
        ({"pooling": "mean"}, ValueError, "pooling='mean'"),
        ({"dropout": 1.5}, ValueError, "dropout=1.5"),
        ({"hidden_units": (8, 0)}, ValueError, "hidden_units"),
        ({"batchnorm": "train"}, ValueError, "batchnorm='train'"),
        ({"preprocessing": "bgr"}, ValueError, "preprocessing='bgr'"),
        ({"hidden_activation": "relux"}, ValueError, "hidden_activation='relux'"),
        ({"seed": 1.5}, TypeError, "seed=1.5"),
    ],
)
def test_bad_input(kwargs, error, match):
    original = make_classifier()
    before = weights_of(original)
    with pytest.raises(error, match=match):
        build(original, **kwargs)
    assert not any(changed(before, original))
    assert all(layer.trainable for layer in original.layers)


def test_unidentifiable_output_layer_needs_cut_at():
    features = kt.pop_top(make_classifier(), cut_at="bn3")
    with pytest.raises(ValueError, match="'bn3'.*cut_at"):
        build(features)
    assert build(features, cut_at=-1).backbone.model.output.shape == (None, 8, 8, 8)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no/such/model.keras"):
        build("no/such/model.keras")


def test_training_never_changes_the_users_model(images, labels):
    original = make_classifier()
    before = weights_of(original)
    model = build(original)
    model.unfreeze()
    model.compile()
    model.fit(images, labels, epochs=1, verbose=0)
    assert not any(changed(before, original))
    assert all(layer.trainable for layer in original.layers)


def test_drop_in_fit_with_tf_data_and_callbacks(tmp_path, images, labels):
    model = build()
    model.compile()
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    checkpoint = str(tmp_path / "best.keras")
    history = model.fit(
        data,
        validation_data=data,
        epochs=3,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(checkpoint, save_best_only=True),
            keras.callbacks.TensorBoard(str(tmp_path / "logs")),
        ],
    )
    assert "val_accuracy" in history.history
    assert (tmp_path / "logs").exists()
    restored = keras.saving.load_model(checkpoint)
    assert type(restored) is kt.TransferModel
    loss, accuracy = restored.evaluate(data, verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1


def test_compile_options():
    model = build()
    model.compile(optimizer="sgd", learning_rate=0.05)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.learning_rate.numpy() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="learning_rate=0.1"):
        model.compile(optimizer=keras.optimizers.Adam(), learning_rate=0.1)


def test_apply_strategy():
    model = build()
    model.apply_strategy(kt.choose_strategy(num_examples=10_000, num_classes=3))
    assert model.backbone.trainable_weights
    model.apply_strategy("head_only")
    assert not model.backbone.trainable_weights
    with pytest.raises(ValueError, match="'gradual'"):
        model.apply_strategy("gradual")


def test_rejected_compile_keeps_the_previous_one():
    model = build()
    model.compile()
    with pytest.raises(ValueError, match="learning_rate=0.1"):
        model.compile(optimizer=keras.optimizers.SGD(), learning_rate=0.1)
    model.unfreeze()  # recompiles with the last accepted compile() arguments
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-4)


def test_auto_learning_rate_survives_save_load(tmp_path, images, labels):
    model = build()
    model.compile()
    model.unfreeze(top_groups=1)
    model.fit(images, labels, epochs=1, verbose=0)
    path = str(tmp_path / "auto.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(1e-4)
    loaded.freeze_backbone()
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(1e-3)


def test_cut_at_with_a_named_backbone_is_refused():
    with pytest.raises(ValueError, match="cut_at='conv_1'"):
        kt.TransferModel(
            "mobilenet_v3_small",
            2,
            input_shape=(32, 32, 3),
            weights=None,
            cut_at="conv_1",
        )


def test_unfreezing_more_after_a_partial_unfreeze():
    # On TensorFlow, `layer.trainable = True` on an already trainable layer is a
    # no-op that leaves frozen sub-layers frozen; unfreezing must reach them.
    model = build()
    model.unfreeze(top_groups=1)
    top = len(model.backbone.trainable_weights)
    model.unfreeze(top_groups=2)
    assert len(model.backbone.trainable_weights) > top
    model.unfreeze()
    everything = [
        v
        for layer in kt.freezing.weighted_layers(model.backbone)
        for v in layer._trainable_variables
    ]
    assert len(model.backbone.trainable_weights) == len(everything) == 12
    model.unfreeze(top_groups=1)
    assert len(model.backbone.trainable_weights) == top
