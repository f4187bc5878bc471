"""Wider output layers, kept pretrained tops, class names, LwF, extra layers."""

import keras
import numpy as np
import pytest
from conftest import SIZE, make_classifier

import keras_transfer as kt


def logits(model, x):
    """Pre-activation outputs of the model's output layer."""
    top = kt.find_output_layer(model)
    features = keras.Model(model.inputs[0], top.input)(x, training=False)
    out = top(features)
    if isinstance(top, keras.layers.Dense) and top.activation is not None:
        kernel, bias = (w.numpy() for w in top.weights)
        out = keras.ops.convert_to_numpy(features) @ kernel + bias
    return np.asarray(out).reshape(len(x), -1)


def transfer_model(**kwargs):
    kwargs.setdefault("num_classes", 3)
    return kt.TransferModel(
        make_classifier(), input_shape=(SIZE, SIZE, 3), seed=0, **kwargs
    )


def conv_top_classifier(num_classes=5):
    """A MobileNetV3-style top: a 1x1 convolution on pooled features, flattened."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    x = keras.layers.Reshape((num_classes,))(x)
    outputs = keras.layers.Activation("softmax")(x)
    return keras.Model(inputs, outputs)


# --- widen_output on any classifier ------------------------------------------


@pytest.mark.parametrize("make", [make_classifier, conv_top_classifier])
def test_widen_output_keeps_old_logits_exactly(make, images):
    original = make()
    wide = kt.widen_output(original, 3)
    assert wide.output_shape == (None, 8)
    old, new = logits(original, images), logits(wide, images)
    np.testing.assert_allclose(new[:, :5], old, atol=1e-6)
    kernel = kt.find_output_layer(wide).weights[0].numpy().reshape(-1, 8)
    # New units are freshly initialised: not zeros, not copies of old ones.
    for column in range(5, 8):
        assert np.abs(kernel[:, column]).sum() > 0
        assert not any(np.allclose(kernel[:, column], kernel[:, j]) for j in range(5))
    # The original model is untouched.
    assert original.output_shape == (None, 5)
    np.testing.assert_array_equal(logits(original, images), old)


def test_widen_output_of_a_real_application_top():
    base = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), include_preprocessing=False
    )
    wide = kt.widen_output(base, ["a", "b"])
    assert wide.output_shape == (None, 1002)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(logits(wide, x)[:, :1000], logits(base, x), atol=1e-5)


@pytest.mark.parametrize(
    "new_classes, error",
    [
        (0, ValueError),
        (-2, ValueError),
        ([], ValueError),
        ("cat", TypeError),
        (["a", "a"], ValueError),
        ([""], ValueError),
        (True, TypeError),
    ],
)
def test_widen_output_rejects_bad_new_classes(new_classes, error):
    with pytest.raises(error, match="new_classes"):
        kt.widen_output(make_classifier(), new_classes)


# --- TransferModel.widen ------------------------------------------------------


def test_transfer_model_widen_keeps_everything_and_names_classes(images, tmp_path):
    model = transfer_model(class_names=["cat", "dog", "fox"])
    model.unfreeze(top_groups=1)
    wide = model.widen(["owl", "bee"])
    assert type(wide) is kt.TransferModel
    assert wide.num_classes == 5 and wide.old_classes == 3
    assert wide.class_names == ["cat", "dog", "fox", "owl", "bee"]
    np.testing.assert_allclose(
        logits(wide, images)[:, :3], logits(model, images), atol=1e-6
    )
    # Every other weight and the frozen state are the same.
    assert len(wide.weights) == len(model.weights)
    for a, b in zip(model.backbone.weights, wide.backbone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert [w.path for w in wide.trainable_weights if "backbone" in w.path] == [
        w.path for w in model.trainable_weights if "backbone" in w.path
    ]
    assert model.num_classes == 3  # unchanged
    # Class names and old classes survive saving.
    path = tmp_path / "wide.keras"
    wide.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.class_names == wide.class_names and loaded.old_classes == 3
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), wide.predict(images, verbose=0), atol=1e-6
    )


def test_widen_keeps_compile_arguments_and_rejects_regression():
    model = transfer_model()
    model.compile(learning_rate=3e-3)
    wide = model.widen(1)
    assert wide.compiled and wide._compile_request["learning_rate"] == 3e-3
    assert wide.class_names == ["class_0", "class_1", "class_2", "class_3"]
    with pytest.raises(ValueError, match="task='regression'|task 'multiclass'"):
        transfer_model(task="regression", num_classes=2).widen(1)


def test_predict_classes_returns_names(images):
    model = transfer_model(class_names=["cat", "dog", "fox"])
    probabilities = model.predict(images, verbose=0)
    names = model.predict_classes(images, verbose=0)
    assert list(names) == [["cat", "dog", "fox"][i] for i in probabilities.argmax(1)]
    top = model.predict_classes(images[:2], top=2, verbose=0)
    assert [name for name, _ in top[0]][0] == names[0]
    assert top[0][0][1] == pytest.approx(probabilities[0].max(), abs=1e-6)
    with pytest.raises(ValueError, match="top"):
        model.predict_classes(images, top=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_names=["a", "b"]), "2 class_names for num_classes=3"),
        (dict(class_names=["a", "a", "b"]), "unique"),
        (dict(class_names="abc"), "class_names"),
        (dict(extra_classes=2), "keep_top=True"),
        (dict(keep_top=True, hidden_units=(4,)), "hidden_units"),
        (dict(keep_top=True, num_classes=7, extra_classes=1), "num_classes=7"),
        (dict(keep_top=True, num_classes=None, extra_classes=["x", "x"]), "unique"),
    ],
)
def test_bad_class_arguments_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        transfer_model(**kwargs)


# --- keep_top: the pretrained classifier, widened ----------------------------


def test_keep_top_of_a_user_classifier(images, tmp_path):
    original = make_classifier(num_classes=5)
    model = kt.TransferModel(
        original, keep_top=True, extra_classes=["new"], input_shape=(SIZE, SIZE, 3)
    )
    assert model.num_classes == 6 and model.old_classes == 5
    assert model.class_names[-1] == "new"
    np.testing.assert_allclose(
        logits(model, images)[:, :5], logits(original, images), atol=1e-6
    )
    path = tmp_path / "kept.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    assert loaded.class_names == model.class_names


def test_keep_top_of_a_conv_top_classifier(images):
    original = conv_top_classifier()
    model = kt.TransferModel(original, keep_top=True, extra_classes=2)
    np.testing.assert_allclose(
        logits(model, images)[:, :5], logits(original, images), atol=1e-5
    )


def test_keep_top_of_the_imagenet_default_with_imagenet_names():
    model = kt.TransferModel(
        "efficientnet_lite0", keep_top=True, extra_classes=["x-ray"], dropout=0.0
    )
    assert model.num_classes == 1001 and model.old_classes == 1000
    assert model.class_names[285] == "Egyptian cat" and model.class_names[-1] == "x-ray"
    reference = kt.efficientnet_lite(0, classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(
        logits(model, x)[:, :1000], reference.predict(x, verbose=0), atol=1e-4
    )


# --- Learning without Forgetting --------------------------------------------


def _old_and_new_task(seed=0):
    rng = np.random.default_rng(seed)
    x_new = rng.uniform(0, 255, (32, SIZE, SIZE, 3)).astype("float32")
    x_new[:16, :, :, 0] *= 0.3  # class 4: bright red, class 3: dark red
    y_new = np.where(np.arange(32) < 16, 3, 4)
    return x_new, y_new


def _train_new_classes(lwf, epochs=15):
    model = transfer_model(dropout=0.0)
    model.unfreeze()
    wide = model.widen(2)
    wide.compile(learning_rate=0.01)
    x_new, y_new = _old_and_new_task()
    history = wide.fit(x_new, y_new, epochs=epochs, batch_size=16, verbose=0, lwf=lwf)
    return model, wide, history, x_new


def test_lwf_keeps_old_class_outputs_that_plain_training_forgets():
    _, plain, _, x = _train_new_classes(None)
    teacher, distilled, history, _ = _train_new_classes({"temperature": 2.0})

    def old_distribution(model):
        p = model.predict(x, verbose=0)[:, :3]
        return p / p.sum(axis=1, keepdims=True)

    target = old_distribution(teacher)
    plain_gap = np.abs(old_distribution(plain) - target).mean()
    lwf_gap = np.abs(old_distribution(distilled) - target).mean()
    assert plain_gap > 0.05  # plain training moved the old classes' outputs
    assert lwf_gap < plain_gap / 3
    # Both learnt the new classes.
    for model in (plain, distilled):
        predicted = model.predict(x, verbose=0).argmax(axis=1)
        assert (predicted == _old_and_new_task()[1]).mean() >= 0.9
    assert "loss" in history.history
    # The teacher is a frozen copy: the widened model's weights did not leak.
    assert distilled.__dict__["_lwf"].teacher.trainable is False
    assert len(distilled.weights) == len(teacher.weights) + 0


def test_lwf_adds_the_distillation_term_only_in_training(images, tmp_path):
    model = transfer_model().widen(2)
    model.compile()
    y = np.full(len(images), 3)
    model._set_distillation({"weight": 1.0})
    # At the teacher's own weights the term is zero.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.__dict__["_lwf"].loss(images, model(images))),
        0.0,
        atol=1e-6,
    )
    model._set_distillation(None)
    plain = model.evaluate(images, y, verbose=0, return_dict=True)["loss"]
    model.fit(images, y, epochs=1, verbose=0, lwf=True)
    assert model.__dict__["_lwf_active"] is None  # off again after fit
    # The teacher is not part of the model: saving keeps only the model.
    path = tmp_path / "lwf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert len(loaded.weights) == len(model.weights)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    assert np.isfinite(model.evaluate(images, y, verbose=0, return_dict=True)["loss"])
    assert np.isfinite(plain)


@pytest.mark.parametrize(
    "lwf", [{"temperature": 0}, {"weight": -1}, {"temp": 2}, "yes", 2.0]
)
def test_bad_lwf_settings_are_refused(images, lwf):
    model = transfer_model().widen(1)
    model.compile()
    with pytest.raises(ValueError, match="lwf"):
        model.fit(images, np.zeros(len(images)), epochs=1, verbose=0, lwf=lwf)


def test_lwf_needs_a_widened_classifier(images):
    model = transfer_model()
    model.compile()
    with pytest.raises(ValueError, match="widen it first"):
        model.fit(images, np.zeros(len(images)), epochs=1, verbose=0, lwf=True)


def test_fine_tune_passes_lwf_through(images):
    model = transfer_model().widen(1)
    history = model.fine_tune(
        images,
        np.full(len(images), 3),
        epochs=1,
        freeze_epochs=1,
        verbose=0,
        lwf=True,
    )
    assert len(history.history["loss"]) == 2


# --- Adding hidden layers -------------------------------------------------------


def test_add_hidden_layers_keeps_other_weights(images, tmp_path):
    model = transfer_model(hidden_units=(8,), class_names=["a", "b", "c"])
    model.unfreeze(top_groups=1)
    deeper = model.add_hidden_layers((6, 4), activation="gelu", batchnorm=True)
    names = [layer.name for layer in deeper.layers]
    assert (
        names.index("head_dense_1")
        < names.index("head_dense_2")
        < names.index("head_batchnorm_3")
        < names.index("predictions")
    )
    assert deeper.get_layer("head_activation_2").get_config()["activation"] == "gelu"
    for name in ("backbone", "head_dense_1"):
        for a, b in zip(
            model.get_layer(name).weights, deeper.get_layer(name).weights, strict=True
        ):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert deeper.get_layer("predictions").weights[0].shape == (4, 3)
    assert deeper.class_names == ["a", "b", "c"]
    assert [w.path for w in deeper.backbone.trainable_weights] == [
        w.path for w in model.backbone.trainable_weights
    ]
    path = tmp_path / "deeper.keras"
    deeper.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), deeper.predict(images, verbose=0), atol=1e-6
    )
    with pytest.raises(ValueError, match="units"):
        model.add_hidden_layers(())
    with pytest.raises(ValueError, match="hidden_units"):
        model.add_hidden_layers(0)


def test_keep_top_of_a_named_keras_application(images):
    model = kt.TransferModel(
        "mobilenet_v3_small",
        weights=None,
        keep_top=True,
        extra_classes=2,
        input_shape=(SIZE * 2, SIZE * 2, 3),
    )
    assert model.num_classes == 1002 and model.old_classes == 1000
    # Random weights: the names are not ImageNet's.
    assert model.class_names[:2] == ["class_0", "class_1"]
    assert model.class_names[-2:] == ["class_1000", "class_1001"]
    with pytest.raises(ValueError, match="TF-Hub"):
        kt.TransferModel("hub:/no/such/model", keep_top=True, input_shape=(8, 8, 3))


def test_copies_get_their_own_optimizer_and_fresh_names():
    model = transfer_model(class_names=["a", "class_3", "b"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    wide = model.widen(2)
    assert wide.class_names[-2:] == ["class_4", "class_5"]  # class_3 is taken
    assert wide.optimizer is not model.optimizer
    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3))
    wide.fit(x, np.array([3, 4, 0, 1]), epochs=1, verbose=0)
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)  # still trains
    deeper = wide.add_hidden_layers(4)
    assert deeper.old_classes is None  # a new output layer keeps nothing
    with pytest.raises(ValueError, match="widen it first"):
        deeper.compile()
        deeper.fit(x, np.zeros(4), epochs=1, verbose=0, lwf=True)
