import keras
import numpy as np
import pytest

import keras_transfer as kt
from keras_transfer.optimizers import group_multipliers


def variables(seed=0, count=2, shape=(3, 2)):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=shape).astype("float32")) for _ in range(count)
    ]


def gradients(step, count=2, shape=(3, 2)):
    # Magnitudes of 0.5 or more, so that Adam's epsilon is negligible.
    rng = np.random.default_rng(100 + step)
    values = [rng.normal(size=shape) for _ in range(count)]
    return [(np.sign(v) * (0.5 + np.abs(v))).astype("float32") for v in values]


@pytest.mark.parametrize(
    "make",
    [
        lambda lr: keras.optimizers.Adam(lr),
        lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.1),
        lambda lr: keras.optimizers.SGD(lr, momentum=0.9, weight_decay=0.05),
    ],
    ids=["adam", "adamw", "sgd_momentum_decay"],
)
def test_each_group_steps_like_its_own_optimizer_at_its_rate(make):
    base, multipliers = 0.01, (0.1, 1.0)
    grouped_vars, reference_vars = variables(), variables()
    grouped = kt.GroupedOptimizer(make(base), multipliers)
    grouped.build(grouped_vars, group_ids=[0, 1])
    references = [make(base * m) for m in multipliers]
    for step in range(4):
        grads = gradients(step)
        grouped.apply(grads, grouped_vars)
        for optimizer, grad, variable in zip(
            references, grads, reference_vars, strict=True
        ):
            optimizer.apply([grad], [variable])
    for got, want in zip(grouped_vars, reference_vars, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)


def test_rates_scale_adam_steps_not_gradients():
    # Adam's first step is lr * sign(g) whatever the gradient's scale: a
    # multiplier applied to gradients would change nothing.
    start = variables()
    grouped_vars = [keras.Variable(v.numpy()) for v in start]
    grouped = kt.GroupedOptimizer(keras.optimizers.Adam(0.01), (0.1, 1.0))
    grouped.build(grouped_vars, group_ids=[0, 1])
    grouped.apply(gradients(0), grouped_vars)
    steps = [
        np.abs(v.numpy() - s.numpy()) for v, s in zip(grouped_vars, start, strict=True)
    ]
    np.testing.assert_allclose(steps[0], 0.001, rtol=1e-3)
    np.testing.assert_allclose(steps[1], 0.01, rtol=1e-3)


def test_a_group_that_starts_late_gets_a_fresh_adam_start():
    late = variables(count=2)
    grouped = kt.GroupedOptimizer(keras.optimizers.Adam(0.01), (1.0, 1.0))
    grouped.build(late, group_ids=[0, 1])
    for step in range(5):
        grouped.apply(gradients(step)[1:], late[1:])  # only group 1 trains
    before = late[0].numpy()
    grouped.apply(gradients(9)[:1], late[:1])
    # Bias correction counts the group's own steps: a first step of exactly lr.
    np.testing.assert_allclose(np.abs(late[0].numpy() - before), 0.01, rtol=1e-3)
    assert [int(o.iterations.numpy()) for o in grouped.group_optimizers] == [1, 5]
    assert int(grouped.iterations.numpy()) == 6


def test_learning_rate_schedules_and_assignment_reach_every_group():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    grouped = kt.GroupedOptimizer(keras.optimizers.SGD(schedule), (0.25, 1.0))
    vars_ = variables()
    grouped.build(vars_, group_ids=[0, 1])
    for step in range(3):
        grouped.apply(gradients(step)[1:], vars_[1:])
    # The schedule is read at the shared step count (3), not the group's (0).
    rates = [float(o.learning_rate) for o in grouped.group_optimizers]
    np.testing.assert_allclose(rates, [0.25 * 0.1 * 0.5**3, 0.1 * 0.5**3], rtol=1e-6)
    plain = kt.GroupedOptimizer(keras.optimizers.Adam(0.1), (0.5, 1.0))
    plain.learning_rate = 0.02  # what ReduceLROnPlateau does
    np.testing.assert_allclose(
        [float(o.learning_rate) for o in plain.group_optimizers], [0.01, 0.02]
    )


def test_l2_sp_pulls_anchored_weights_back_to_their_start():
    anchored, free = variables()
    start = anchored.numpy(), free.numpy()
    grouped = kt.GroupedOptimizer(
        keras.optimizers.SGD(0.5), (1.0, 1.0), l2_sp=0.1, anchored_groups=[0]
    )
    grouped.build([anchored, free], group_ids=[0, 1])
    np.testing.assert_array_equal(grouped.anchors[0].numpy(), start[0])
    anchored.assign(start[0] + 1.0)
    free.assign(start[1] + 1.0)
    zero = np.zeros((3, 2), "float32")
    grouped.apply([zero, zero], [anchored, free])
    # gradient 0.1 * (w - w0) = 0.1: w moves 0.5 * 0.1 back towards w0.
    np.testing.assert_allclose(anchored.numpy(), start[0] + 0.95, rtol=1e-6)
    np.testing.assert_allclose(free.numpy(), start[1] + 1.0, rtol=1e-6)


def test_config_round_trip():
    grouped = kt.GroupedOptimizer(
        keras.optimizers.AdamW(3e-4, weight_decay=0.01, beta_1=0.8, clipnorm=1.0),
        (0.5, 1.0),
        l2_sp=0.01,
        anchored_groups=[0],
    )
    again = keras.optimizers.deserialize(keras.optimizers.serialize(grouped))
    assert isinstance(again, kt.GroupedOptimizer)
    assert again.multipliers == (0.5, 1.0) and again.l2_sp == 0.01
    assert again.clipnorm == 1.0  # clipping acts on all gradients together
    inner = again.group_optimizers[0]
    assert isinstance(inner, keras.optimizers.AdamW)
    assert inner.beta_1 == pytest.approx(0.8) and inner.weight_decay == 0.01
    assert inner.clipnorm is None
    assert float(again.learning_rate) == pytest.approx(3e-4)


def test_multipliers():
    assert group_multipliers(3) == (1.0, 1.0, 1.0, 1.0)
    assert group_multipliers(3, layer_decay=0.5) == (0.125, 0.25, 0.5, 1.0)
    assert group_multipliers(2, lr_multipliers=[0.1, 0.3]) == (0.1, 0.3, 1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layer_decay": 0.0}, "layer_decay=0.0"),
        ({"layer_decay": 1.5}, "layer_decay=1.5"),
        ({"lr_multipliers": [0.1]}, "Expected `lr_multipliers` to be 2"),
        ({"lr_multipliers": [0.1, -1]}, "lr_multipliers=\\[0.1, -1\\]"),
        ({"layer_decay": 0.5, "lr_multipliers": [1, 1]}, "not both"),
    ],
)
def test_bad_multipliers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_multipliers(2, **kwargs)


def test_bad_build_and_arguments():
    grouped = kt.GroupedOptimizer("adam", (1.0, 1.0))
    with pytest.raises(ValueError, match="group of each variable"):
        grouped.build(variables())
    with pytest.raises(ValueError, match="group_ids=\\[0, 2\\]"):
        grouped.build(variables(), group_ids=[0, 2])
    assert not grouped.built
    with pytest.raises(ValueError, match="multipliers=\\(\\)"):
        kt.GroupedOptimizer("adam", ())
    with pytest.raises(ValueError, match="l2_sp=-1"):
        kt.GroupedOptimizer("adam", (1.0,), l2_sp=-1)
    with pytest.raises(TypeError, match="plain optimizer"):
        kt.GroupedOptimizer(grouped, (1.0, 1.0))
    with pytest.raises(TypeError, match="set the dtype policy"):
        kt.GroupedOptimizer(keras.optimizers.LossScaleOptimizer(grouped), (1.0,))
    with pytest.raises(ValueError, match="multipliers=0.5"):
        kt.GroupedOptimizer("adam", 0.5)
    with pytest.raises(ValueError, match=r"anchored_groups=\(\)"):
        kt.GroupedOptimizer("adam", (1.0, 1.0), l2_sp=0.1)
    with pytest.raises(ValueError, match=r"anchored_groups=\[2\]"):
        kt.GroupedOptimizer("adam", (1.0, 1.0), l2_sp=0.1, anchored_groups=[2])
    with pytest.raises(ValueError, match="weight_decay=0.1"):
        kt.GroupedOptimizer("adam", (1.0,), weight_decay=0.1)


def test_clipping_acts_on_all_groups_together():
    vars_ = [keras.Variable(np.zeros(4, "float32")) for _ in range(2)]
    grouped = kt.GroupedOptimizer(
        keras.optimizers.SGD(1.0, global_clipnorm=0.01), (1.0, 1.0)
    )
    grouped.build(vars_, group_ids=[0, 1])
    grouped.apply([np.full(4, 3.0, "float32"), np.full(4, 4.0, "float32")], vars_)
    total = np.sqrt(sum(float(np.sum(v.numpy() ** 2)) for v in vars_))
    np.testing.assert_allclose(total, 0.01, rtol=1e-5)  # one norm over both
    wrapper_wins = kt.GroupedOptimizer(
        keras.optimizers.SGD(1.0, clipnorm=5.0), (1.0,), clipnorm=1.0
    )
    assert wrapper_wins.clipnorm == 1.0


def test_rate_scale_composes_with_learning_rate_assignment():
    grouped = kt.GroupedOptimizer(keras.optimizers.Adam(1e-3), (0.5, 1.0))
    grouped.rate_scale = 0.1
    np.testing.assert_allclose(float(grouped.learning_rate), 1e-4, rtol=1e-6)
    grouped.learning_rate = float(grouped.learning_rate) * 0.5  # ReduceLROnPlateau
    np.testing.assert_allclose(float(grouped.learning_rate), 5e-5, rtol=1e-6)
    grouped.rate_scale = 1.0
    np.testing.assert_allclose(float(grouped.learning_rate), 5e-4, rtol=1e-6)
    rates = [float(o.learning_rate) for o in grouped.group_optimizers]
    np.testing.assert_allclose(rates, [2.5e-4, 5e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="Received: 0"):
        grouped.rate_scale = 0


def test_weight_decay_exclusions_reach_every_group():
    template = keras.optimizers.AdamW(0.1, weight_decay=0.5)
    template.exclude_from_weight_decay(var_names=["skip"])
    grouped = kt.GroupedOptimizer(template, (1.0, 1.0))
    kept = keras.Variable(np.ones(2, "float32"), name="skip_me")
    decayed = keras.Variable(np.ones(2, "float32"), name="decay_me")
    grouped.build([kept, decayed], group_ids=[0, 1])
    zero = np.zeros(2, "float32")
    grouped.apply([zero, zero], [kept, decayed])
    np.testing.assert_allclose(kept.numpy(), 1.0)
    np.testing.assert_allclose(decayed.numpy(), 1.0 - 0.1 * 0.5, rtol=1e-6)
