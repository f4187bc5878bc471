import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_classifier

import keras_transfer as kt

# make_classifier's backbone splits into 4 groups by depth:
# [conv1, bn1], [conv2], [bn2], [conv3, bn3].
NUM_GROUPS = 4


def build(**kwargs):
    kwargs.setdefault("num_classes", 3)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("dropout", 0.0)
    return kt.TransferModel(make_classifier(), **kwargs)


def group_weights(model):
    """The trainable-kind weights of each backbone group, then of the head."""
    groups = [
        [v.numpy().copy() for layer in g.layers for v in layer._trainable_variables]
        for g in model.layer_groups
    ]
    return groups + [[v.numpy().copy() for v in model.get_layer("predictions").weights]]


def moved(before, after):
    return [
        any(not np.array_equal(a, b) for a, b in zip(x, y, strict=True))
        for x, y in zip(before, after, strict=True)
    ]


class Snapshots(keras.callbacks.Callback):
    """Weights at each epoch's end, and what trained in each epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []
        self.head_moments = []

    def on_train_begin(self, logs=None):
        self.weights = [group_weights(self.model)]

    def on_epoch_begin(self, epoch, logs=None):
        self.head_moments.append(("begin", epoch, self._moments()))

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(group_weights(self.model))
        self.head_moments.append(("end", epoch, self._moments()))

    def _moments(self):
        head = self.model.optimizer.group_optimizers[-1]
        return [v.numpy().copy() for v in head.variables]

    def trained(self):
        """Per epoch: which of [groups..., head] changed during it."""
        return [
            moved(a, b)
            for a, b in zip(self.weights[:-1], self.weights[1:], strict=True)
        ]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(24, 16, 16, 3)).astype("float32")
    return x, np.arange(24) % 3


def test_gradual_unfreeze_thaws_groups_from_the_top_and_keeps_head_moments(
    data, caplog
):
    model = build()
    model.compile()
    snapshots = Snapshots()
    schedule = kt.GradualUnfreeze(every=2)
    with caplog.at_level(logging.INFO, logger="keras_transfer"):
        model.fit(
            *data, epochs=6, batch_size=8, verbose=0, callbacks=[schedule, snapshots]
        )
    T, F = True, False
    assert snapshots.trained() == [
        [F, F, F, F, T],  # epochs 1-2: head only
        [F, F, F, F, T],
        [F, F, F, T, T],  # epochs 3-4: + top group
        [F, F, F, T, T],
        [F, F, T, T, T],  # epochs 5-6: + the next
        [F, F, T, T, T],
    ]
    # The head's Adam state crosses every change of stage unchanged.
    moments = snapshots.head_moments
    for (kind, epoch, end), (_, _, begin) in zip(
        moments[1:-1:2], moments[2::2], strict=True
    ):
        assert kind == "end"
        for a, b in zip(end, begin, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"after epoch {epoch}")
    head = model.optimizer.group_optimizers[-1]
    assert int(head.iterations.numpy()) == 6 * 3  # never reset
    top = model.optimizer.group_optimizers[NUM_GROUPS - 1]
    assert int(top.iterations.numpy()) == 4 * 3  # counts from its first epoch
    assert [epoch for epoch, _ in schedule.changes] == [0, 2, 4]
    assert "Epoch 3: 1 of 4 backbone groups trainable (depth 4/4)" in caplog.text


def count_traces(model, **fit_kwargs):
    traces = []
    step = model.train_step

    def counting_step(batch):
        traces.append(len(model.trainable_weights))
        return step(batch)

    model.train_step = counting_step
    model.fit(*fit_kwargs.pop("data"), batch_size=8, verbose=0, **fit_kwargs)
    return traces


def test_each_change_of_stage_retraces_once(data):
    plain = build()
    plain.compile()
    first = count_traces(plain, data=data, epochs=2)  # TensorFlow's own first call
    model = build()
    model.compile()
    traces = count_traces(
        model, data=data, epochs=6, callbacks=[kt.GradualUnfreeze(every=2)]
    )
    assert traces[: len(first)] == first
    # Then one trace per later stage, each for more trainable weights.
    assert len(traces) == len(first) + 2
    assert traces[len(first) - 1] < traces[-2] < traces[-1]


def test_at_epochs_groups_per_step_and_max_groups():
    schedule = kt.GradualUnfreeze(at_epochs=[1, 3, 5], groups_per_step=2, max_groups=3)
    stages = [schedule.stage(epoch, 5)[0] for epoch in range(7)]
    assert stages == [(), (3, 4), (3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 4), (2, 3, 4)]
    assert kt.GradualUnfreeze(every=1, groups_per_step=10).stage(1, 4)[0] == (
        0,
        1,
        2,
        3,
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"every": 0}, "every=0"),
        ({"every": None}, "every=None"),
        ({"at_epochs": [3, 1]}, "at_epochs=\\[3, 1\\]"),
        ({"at_epochs": []}, "at_epochs=\\[\\]"),
        ({"groups_per_step": 0}, "groups_per_step=0"),
        ({"max_groups": 1.5}, "max_groups=1.5"),
    ],
)
def test_bad_gradual_unfreeze_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kt.GradualUnfreeze(**kwargs)


def test_chain_thaw_trains_one_group_at_a_time_then_all(data, caplog):
    model = build()
    model.compile()
    snapshots = Snapshots()
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        model.fit(
            *data,
            epochs=7,
            batch_size=8,
            verbose=0,
            callbacks=[kt.ChainThaw(), snapshots],
        )
    assert not [r for r in caplog.records if r.name == "keras_transfer"]
    T, F = True, False
    assert snapshots.trained() == [
        [F, F, F, F, T],
        [T, F, F, F, F],
        [F, T, F, F, F],
        [F, F, T, F, F],
        [F, F, F, T, F],
        [T, T, T, T, T],
        [T, T, T, T, T],
    ]
    with caplog.at_level(logging.WARNING, logger="keras_transfer"):
        short = build()
        short.compile()
        short.fit(*data, epochs=2, verbose=0, callbacks=[kt.ChainThaw()])
    assert "all 6 stages need at least 6 epochs" in caplog.text
    with pytest.raises(ValueError, match="epochs_per_stage=0"):
        kt.ChainThaw(epochs_per_stage=0)


def batchnorm_stats(model):
    return [
        v.numpy().copy()
        for layer in kt.freezing.weighted_layers(model.backbone)
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


@pytest.mark.parametrize("batchnorm", ["frozen", "trainable"])
def test_batchnorm_of_unfrozen_groups(data, batchnorm):
    model = build(batchnorm=batchnorm)
    model.compile()
    before = batchnorm_stats(model)
    model.fit(
        *data,
        epochs=2,
        batch_size=8,
        verbose=0,
        callbacks=[kt.GradualUnfreeze(every=1, groups_per_step=4)],
    )
    after = batchnorm_stats(model)
    same = [np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(same) if batchnorm == "frozen" else not any(same)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt


def halve_at_epoch_3(epoch, rate):
    return rate * 0.5 if epoch == 2 else rate


def test_backup_and_restore_resumes_at_the_right_stage(data, tmp_path):
    def fit(model, callbacks):
        return model.fit(
            *data,
            epochs=6,
            batch_size=8,
            shuffle=False,
            verbose=0,
            callbacks=[
                *callbacks[:1],
                keras.callbacks.LearningRateScheduler(halve_at_epoch_3),
                *callbacks[1:],
            ],
        )

    def compiled():
        model = build()
        model.compile()
        return model

    reference = compiled()
    fit(reference, [kt.GradualUnfreeze(every=2)])
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(
            compiled(),
            [
                kt.GradualUnfreeze(every=2),
                keras.callbacks.BackupAndRestore(backup),
                Interrupt(3),
            ],
        )
    schedule = kt.GradualUnfreeze(every=2)
    resumed = compiled()
    history = fit(resumed, [schedule, keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 3  # epochs 4-6 only
    assert schedule.changes[0][0] == 3
    assert schedule.changes[0][1].startswith("1 of 4 backbone groups")
    # 1e-3, halved at epoch 3, a tenth while the backbone trains: restored as
    # it was, not reset by the change of stage.
    for model in (resumed, reference):
        np.testing.assert_allclose(float(model.optimizer.learning_rate), 5e-5, 1e-6)
    for got, want in zip(group_weights(resumed), group_weights(reference), strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        resumed.optimizer.variables, reference.optimizer.variables, strict=True
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # Keras leaves the restored epoch on the model; the next fit starts at 0.
    again = resumed.fit(*data, epochs=2, batch_size=8, verbose=0)
    assert len(again.history["loss"]) == 2


def test_tf_data_validation_early_stopping_and_checkpoint(data, tmp_path):
    x, y = data
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = build()
    model.compile(layer_decay=0.5)
    path = str(tmp_path / "best.keras")
    schedule = kt.GradualUnfreeze(every=1)
    history = model.fit(
        train,
        validation_data=(x[:8], y[:8]),
        epochs=6,
        verbose=0,
        callbacks=keras.callbacks.CallbackList(
            [
                schedule,
                # Stops once val_loss has not improved by 10 for 2 epochs.
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=2, min_delta=10
                ),
                keras.callbacks.ModelCheckpoint(path, monitor="val_loss"),
            ],
            add_history=True,
            model=model,
        ),
    )
    assert len(history.history["val_loss"]) == 3  # stopped early
    assert [epoch for epoch, _ in schedule.changes] == [0, 1, 2]
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kt.TransferModel)
    assert isinstance(loaded.optimizer, kt.GroupedOptimizer)
    assert loaded.optimizer.multipliers == model.optimizer.multipliers
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_discriminative_rates_follow_the_groups():
    model = build()
    model.compile(layer_decay=0.5, learning_rate=0.01)
    rates = [float(o.learning_rate) for o in model.optimizer.group_optimizers]
    np.testing.assert_allclose(rates, [0.01 * 0.5**k for k in (4, 3, 2, 1, 0)])
    model.compile(lr_multipliers=[0.1, 0.2, 0.3, 0.4], learning_rate=0.01)
    rates = [float(o.learning_rate) for o in model.optimizer.group_optimizers]
    np.testing.assert_allclose(rates, [0.001, 0.002, 0.003, 0.004, 0.01])


def test_schedules_need_a_compiled_transfer_model(data):
    with pytest.raises(ValueError, match="call `model.compile\\(\\)` first"):
        build().fit(*data, epochs=1, verbose=0, callbacks=[kt.GradualUnfreeze()])
    plain = make_classifier()
    plain.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(TypeError, match="needs a keras_transfer.TransferModel"):
        plain.fit(*data, epochs=1, verbose=0, callbacks=[kt.GradualUnfreeze()])
