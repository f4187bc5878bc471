import keras
import numpy as np
import pytest
from test_callbacks import Snapshots, build, group_weights, moved

import keras_transfer as kt


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(24, 16, 16, 3)).astype("float32")
    return x, np.arange(24) % 3


class Rates(keras.callbacks.Callback):
    """The learning rate of each group's optimizer, per epoch."""

    def __init__(self):
        super().__init__()
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        self.rates.append([float(o.learning_rate) for o in optimizer.group_optimizers])


def test_fine_tune_trains_the_head_then_everything_at_decayed_rates(data):
    model = build()
    snapshots, rates = Snapshots(), Rates()
    history = model.fine_tune(
        *data,
        epochs=2,
        freeze_epochs=2,
        layer_decay=0.75,
        validation_data=data,
        batch_size=8,
        verbose=0,
        callbacks=[snapshots, rates],
    )
    assert len(history.history["loss"]) == len(history.history["val_loss"]) == 4
    T, F = True, False
    assert snapshots.trained() == [[F] * 4 + [T]] * 2 + [[T] * 5] * 2
    decay = [0.75**k for k in (4, 3, 2, 1, 0)]
    np.testing.assert_allclose(rates.rates[0], [1e-3 * d for d in decay], rtol=1e-6)
    np.testing.assert_allclose(rates.rates[2], [1e-4 * d for d in decay], rtol=1e-6)
    assert model.optimizer.multipliers == pytest.approx(decay)


def test_fine_tune_keeps_the_compile_arguments(data):
    model = build()
    metric = keras.metrics.SparseCategoricalAccuracy(name="custom_accuracy")
    model.compile(optimizer="sgd", learning_rate=0.05, metrics=[metric])
    history = model.fine_tune(*data, epochs=1, freeze_epochs=0, verbose=0)
    inner = model.optimizer.group_optimizers[0]
    assert isinstance(inner, keras.optimizers.SGD)
    assert float(inner.learning_rate) == pytest.approx(0.05)  # not "auto"
    assert model.optimizer.multipliers == (1.0,) * 5  # the default: one rate
    assert "custom_accuracy" in history.history


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epochs": 0}, "epochs=0"),
        ({"freeze_epochs": -1}, "freeze_epochs=-1"),
        ({"layer_decay": 2.0}, "layer_decay=2.0"),
    ],
)
def test_bad_fine_tune_arguments(data, kwargs, match):
    model = build()
    with pytest.raises(ValueError, match=match):
        model.fine_tune(*data, verbose=0, **kwargs)


def backbone_drift(model, start):
    return sum(
        float(np.sum((a - b) ** 2))
        for group_now, group_then in zip(
            group_weights(model)[:-1], start[:-1], strict=True
        )
        for a, b in zip(group_now, group_then, strict=True)
    )


def test_l2_sp_holds_the_backbone_near_its_pretrained_weights(data, tmp_path):
    drift = {}
    for strength in (None, 100.0):
        model = build()
        start = group_weights(model)
        model.fine_tune(
            *data, epochs=3, freeze_epochs=1, l2_sp=strength, batch_size=8, verbose=0
        )
        drift[strength] = backbone_drift(model, start)
    assert drift[100.0] < 0.5 * drift[None]

    # The anchors are the pretrained weights, and survive saving and recompiling.
    def assert_anchors_are_pretrained(model):
        backbone_variables = [
            v
            for group in model.layer_groups
            for layer in group.layers
            for v in layer._trainable_variables
        ]
        pretrained = [v for group in start[:-1] for v in group]
        assert len(model.optimizer.anchors) == len(pretrained)
        for variable, value in zip(backbone_variables, pretrained, strict=True):
            np.testing.assert_array_equal(model.optimizer.anchor(variable), value)
        head = model.get_layer("predictions").kernel
        assert model.optimizer.anchor(head) is None

    assert_anchors_are_pretrained(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert_anchors_are_pretrained(loaded)
    loaded.compile(l2_sp=1.0)
    assert_anchors_are_pretrained(loaded)


def test_unfreeze_with_a_grouped_optimizer_keeps_its_state(data):
    model = build()
    model.compile(layer_decay=0.5)
    optimizer = model.optimizer
    model.fit(*data, epochs=1, batch_size=8, verbose=0)
    head = optimizer.group_optimizers[-1]
    moments = [v.numpy().copy() for v in head.variables]
    model.unfreeze()
    assert model.optimizer is optimizer
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)  # "auto"
    for a, b in zip(moments, head.variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    before = group_weights(model)
    model.fit(*data, epochs=1, batch_size=8, verbose=0)
    assert all(moved(before, group_weights(model)))
    model.freeze_backbone()
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    assert int(head.iterations.numpy()) == 6


def test_set_trainable_groups_by_name_and_head():
    model = build()
    model.set_trainable_groups(["depth 4/4", 0], head=False)
    assert model.get_layer("predictions").trainable is False
    trainable = [
        layer.name
        for layer in kt.freezing.weighted_layers(model.backbone)
        if layer.trainable
    ]
    assert trainable == ["conv1", "bn1", "conv3", "bn3"]
    with pytest.raises(ValueError, match="Received: 'top'"):
        model.set_trainable_groups(["top"])
    model.set_trainable_groups("depth 3/4")
    trainable = [
        layer.name
        for layer in kt.freezing.weighted_layers(model.backbone)
        if layer.trainable
    ]
    assert trainable == ["bn2"]


def test_rejected_grouped_compile_keeps_the_previous_one():
    model = build()
    model.compile()
    optimizer = model.optimizer
    with pytest.raises(ValueError, match="lr_multipliers"):
        model.compile(lr_multipliers=[1.0])
    assert model.optimizer is optimizer


def test_fine_tune_keeps_the_compiled_layer_decay(data):
    model = build()
    model.compile(layer_decay=0.5, l2_sp=0.01)
    model.fine_tune(*data, epochs=1, freeze_epochs=1, verbose=0)
    assert model.optimizer.multipliers == (0.0625, 0.125, 0.25, 0.5, 1.0)
    assert model.optimizer.l2_sp == 0.01
    model.fine_tune(*data, epochs=1, freeze_epochs=0, layer_decay=1.0, verbose=0)
    assert model.optimizer.multipliers == (1.0,) * 5


def test_ema_and_gradient_accumulation_with_groups(data):
    model = build()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5),
        layer_decay=0.5,
    )
    model.fit(
        *data,
        epochs=2,
        batch_size=8,
        verbose=0,
        callbacks=[kt.GradualUnfreeze(every=1)],
    )
    # At the end of fit Keras puts the moving averages in place: each weight
    # must get its own (they were built for all weights, in another order).
    optimizer = model.optimizer
    for variable in model.trainable_weights:
        index = optimizer._get_variable_index(variable)
        np.testing.assert_array_equal(
            variable.numpy(),
            optimizer._model_variables_moving_average[index].numpy(),
        )
    accumulating = build()
    accumulating.compile(
        optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=3),
        layer_decay=1.0,
    )
    accumulating.fit(*data, epochs=2, batch_size=4, verbose=0)  # 12 batches
    head = accumulating.optimizer.group_optimizers[-1]
    assert int(head.iterations.numpy()) == 4  # one update per 3 batches


def test_mixed_precision(data):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build()
        model.compile()
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = group_weights(model)
        model.fit(
            *data,
            epochs=2,
            batch_size=8,
            verbose=0,
            callbacks=[kt.GradualUnfreeze(every=1)],
        )
        assert isinstance(model.optimizer.inner_optimizer, kt.GroupedOptimizer)
        assert moved(before, group_weights(model)) == [False] * 3 + [True] * 2
    finally:
        keras.config.set_dtype_policy("float32")


def test_a_keras_compile_is_not_silently_replaced(data):
    model = build()
    model.compile()
    keras.Model.compile(model, "sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="compiled with keras.Model.compile"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[kt.GradualUnfreeze()])
