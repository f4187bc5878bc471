"""TF Serving export: signatures equal predict, nothing changes, versions, atomicity."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SIZE, make_classifier
from hub_models import SIZE as HUB_SIZE
from hub_models import save_hub_model

import keras_transfer as kt

NAMES = ["cat", "dog", "owl"]


def _trained(model, x, y):
    model.compile()
    model.unfreeze()
    model.fit(x, y, epochs=1, verbose=0)  # BatchNorm in the head gets statistics
    return model


@pytest.fixture(scope="module")
def photo():
    """A real photo (scikit-image's cat), SIZE x SIZE, as uint8 and its JPEG."""
    skimage = pytest.importorskip("skimage")
    image = tf.image.resize(skimage.data.chelsea(), (SIZE, SIZE), antialias=True)
    image = tf.cast(tf.round(image), tf.uint8)
    return image.numpy(), tf.io.encode_jpeg(image, quality=90).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, SIZE, SIZE, 3)).astype("float32")
    model = kt.TransferModel(
        make_classifier(),
        input_shape=(SIZE, SIZE, 3),
        class_names=NAMES,
        hidden_units=({"units": 4, "batchnorm": True},),
        seed=0,
    )
    _trained(model, x, np.arange(24) % 3)
    base = tmp_path_factory.mktemp("serving") / "tiny"
    path = model.export_for_serving(str(base), top_k=2, warmup_images=x[:2])
    return model, path, x


def _outputs(signature, tensor):
    return {k: v.numpy() for k, v in signature(tensor).items()}


def test_signatures_equal_predict_on_raw_and_bytes(exported, photo):
    model, path, x = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(kt.serving.SIGNATURES)
    expected = model.predict(x, verbose=0)
    raw = _outputs(loaded.signatures["serving_default"], tf.constant(x))
    np.testing.assert_allclose(raw["probabilities"], expected, atol=1e-5)
    best = np.argsort(-expected, axis=1)[:, :2]
    np.testing.assert_array_equal(raw["top_k_indices"], best)
    assert [c.decode() for c in raw["top_k_classes"][:, 0]] == [
        NAMES[i] for i in best[:, 0]
    ]
    np.testing.assert_allclose(raw["top_k_scores"][:, 0], expected.max(1), atol=1e-5)

    pixels, jpeg = photo
    decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy().astype("float32")
    expected = model.predict(decoded[None], verbose=0)
    by_bytes = _outputs(loaded.signatures["serving_bytes"], tf.constant([jpeg, jpeg]))
    np.testing.assert_allclose(
        by_bytes["probabilities"], np.repeat(expected, 2, 0), atol=1e-5
    )
    as_uint8 = _outputs(loaded.signatures["serving_uint8"], tf.constant(pixels[None]))
    np.testing.assert_allclose(
        as_uint8["probabilities"],
        model.predict(pixels[None].astype("float32"), verbose=0),
        atol=1e-5,
    )
    # Any batch size, any image size (resized inside).
    big = _outputs(loaded.signatures["serving_default"], tf.zeros((1, 40, 30, 3)))
    assert big["probabilities"].shape == (1, 3)


def test_serving_calls_change_no_variable(exported):
    _, path, x = exported
    loaded = tf.saved_model.load(path)
    before = [v.numpy().copy() for v in loaded.variables]
    assert any("moving" in v.name for v in loaded.variables)
    for _ in range(3):
        loaded.signatures["serving_default"](tf.constant(x))
    for a, v in zip(before, loaded.variables, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


def test_labels_asset_and_warmup_requests(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, path, _ = exported
    with open(os.path.join(path, "assets", "labels.txt")) as handle:
        assert handle.read().splitlines() == NAMES
    records = list(tf.data.TFRecordDataset(os.path.join(path, kt.serving.WARMUP_FILE)))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == list(
        kt.serving.SIGNATURES
    )
    loaded = tf.saved_model.load(path)
    for log in logs:  # each request runs as TF Serving would run it
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        ((key, proto),) = request.inputs.items()
        tensor = tf.make_ndarray(proto)
        assert len(tensor) == 2
        signature = loaded.signatures[request.model_spec.signature_name]
        assert signature(**{key: tf.constant(tensor)})["probabilities"].shape == (2, 3)


def test_versions_are_numbered_and_never_overwritten_unless_asked(exported, tmp_path):
    model, _, _ = exported
    base = tmp_path / "models"
    assert model.export_for_serving(str(base), warmup=False).endswith(os.sep + "1")
    assert model.export_for_serving(str(base), warmup=False).endswith(os.sep + "2")
    assert kt.export_for_serving(model, base, version=7, warmup=False).endswith("7")
    assert model.export_for_serving(str(base), warmup=False).endswith("8")
    stamp = os.path.getmtime(base / "7" / "saved_model.pb")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.export_for_serving(str(base), version=7)
    assert os.path.getmtime(base / "7" / "saved_model.pb") == stamp
    model.export_for_serving(
        str(base), version=7, overwrite=True, class_names=["a", "b", "c"]
    )
    with open(base / "7" / "assets" / "labels.txt") as handle:
        assert handle.read().split() == ["a", "b", "c"]
    assert sorted(os.listdir(base)) == ["1", "2", "7", "8"]  # nothing hidden left
    for bad, error in ((0, ValueError), ("3", TypeError), (True, TypeError)):
        with pytest.raises(error, match="version"):
            model.export_for_serving(str(base), version=bad)


def test_a_failed_export_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    model, _, _ = exported
    base = tmp_path / "models"

    def write_half_then_fail(self, path, **kwargs):
        with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    # ExportArchive() returns an instance of the backend's own class.
    archive_class = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive_class, "write_out", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        model.export_for_serving(str(base))
    assert not base.exists()  # the folder it created is gone too
    base.mkdir()
    (base / "1").mkdir()
    with pytest.raises(OSError, match="disk full"):
        model.export_for_serving(str(base))
    assert os.listdir(base) == ["1"]  # a folder that existed stays, as it was


def test_saved_model_cli_shows_and_runs_the_signatures(exported, tmp_path):
    _, path, x = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    shown = subprocess.run(
        [cli, "show", "--dir", path, "--all"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    for name in ("serving_default", "serving_bytes", "image_bytes", "top_k_classes"):
        assert name in shown
    np.save(tmp_path / "x.npy", x[:2])
    ran = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'x.npy'}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    assert "probabilities" in ran and "top_k_classes" in ran


def test_grayscale_widened_and_hub_models_export(tmp_path, photo):
    x = np.random.default_rng(1).uniform(0, 255, (6, SIZE, SIZE, 1)).astype("float32")
    grey = kt.TransferModel(
        make_classifier(), input_shape=(SIZE, SIZE, 1), class_names=NAMES, seed=0
    ).widen(["emu"])
    path = grey.export_for_serving(str(tmp_path / "grey"))
    loaded = tf.saved_model.load(path)
    out = _outputs(loaded.signatures["serving_default"], tf.constant(x))
    np.testing.assert_allclose(
        out["probabilities"], grey.predict(x, verbose=0), atol=1e-5
    )
    assert b"emu" in set(out["top_k_classes"].ravel())
    _, jpeg = photo  # an RGB JPEG is decoded to one channel inside
    grey_pixels = tf.io.decode_jpeg(jpeg, channels=1).numpy().astype("float32")
    by_bytes = _outputs(loaded.signatures["serving_bytes"], tf.constant([jpeg]))
    np.testing.assert_allclose(
        by_bytes["probabilities"],
        grey.predict(grey_pixels[None], verbose=0),
        atol=1e-5,
    )

    handle = save_hub_model(tmp_path / "hub_features")
    hub = kt.TransferModel(
        f"hub:{handle}", num_classes=2, input_shape=(HUB_SIZE, HUB_SIZE, 3), seed=0
    )
    xh = np.random.default_rng(2).uniform(0, 255, (4, HUB_SIZE, HUB_SIZE, 3))
    path = hub.export_for_serving(str(tmp_path / "hub"))
    loaded = tf.saved_model.load(path)
    out = _outputs(loaded.signatures["serving_default"], tf.constant(xh, tf.float32))
    np.testing.assert_allclose(
        out["probabilities"], hub.predict(xh, verbose=0), atol=1e-5
    )


def test_regressor_exports_predictions_and_bad_arguments_are_refused(tmp_path):
    model = kt.TransferModel(
        make_classifier(),
        input_shape=(SIZE, SIZE, 3),
        task="regression",
        num_classes=2,
    )
    path = model.export_for_serving(str(tmp_path / "reg"))
    loaded = tf.saved_model.load(path)
    out = _outputs(loaded.signatures["serving_default"], tf.zeros((1, SIZE, SIZE, 3)))
    assert set(out) == {"predictions"}
    assert not os.path.exists(os.path.join(path, "assets", "labels.txt"))
    with pytest.raises(ValueError, match="top_k"):
        model.export_for_serving(str(tmp_path / "x"), top_k=0)
    with pytest.raises(ValueError, match="warmup_images"):
        model.export_for_serving(str(tmp_path / "x"), warmup_images=np.zeros((1, 4)))
    assert not os.path.exists(tmp_path / "x")
