"""The `keras-transfer` command, run as a subprocess on a tiny image folder."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import SIZE, make_classifier

CLASSES = ("bright", "dark", "red")


def _write_png(path, image):
    tf.io.write_file(str(path), tf.io.encode_png(image.astype("uint8")))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder of generated PNGs (3 classes, 10 each), one corrupt file, one
    zero-byte file, one text file (ignored), and a tiny backbone model file."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", 4)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.uniform(0, 60, (20, 24, 3))
                if name == "bright":
                    image += 190
                elif name == "red":
                    image[..., 0] += 190
                _write_png(folder / f"{i}.png", image)
    (root / "train" / "dark" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "red" / "empty.jpg").write_bytes(b"")
    (root / "train" / "red" / "notes.txt").write_text("not an image")
    backbone = root / "tiny.keras"
    make_classifier().save(backbone)
    return root


def run(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "keras_transfer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(
            os.environ,
            http_proxy="http://127.0.0.1:9",
            https_proxy="http://127.0.0.1:9",
        ),
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _fit(workspace, out, *extra, check=True):
    return run(
        "fit",
        workspace / "train",
        "--backbone",
        workspace / "tiny.keras",
        "--epochs",
        3,
        "--seed",
        1,
        "--out",
        out,
        "--verbose",
        0,
        "--learning-rate",
        0.02,
        *extra,
        check=check,
    )


def test_fit_predict_evaluate_export(workspace, tmp_path):
    out = tmp_path / "run"
    fitted = _fit(workspace, out, "--validation-split", 0.25)
    # Corrupt files are skipped, counted and listed; the text file is ignored.
    assert "broken.png" in fitted.stderr and "empty.jpg" in fitted.stderr
    assert "strategy: head_only" in fitted.stdout  # 10 per class < 100
    assert "skipped 2 file(s)" in fitted.stdout
    for name in (
        "model.keras",
        "class_names.json",
        "history.csv",
        "history.json",
        "training_curves.png",
        "confusion_matrix.png",
        "report.md",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "broken.png" in report and "confusion_matrix.png" in report
    assert json.loads((out / "class_names.json").read_text()) == list(CLASSES)
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 3 and "val_accuracy" in history
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,")
    png = (out / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    files = sorted((workspace / "test" / "red").glob("*.png"))[:2]
    predicted = run("predict", out, *files, "--json", "--top", 2)
    items = json.loads(predicted.stdout)
    assert [item["file"] for item in items] == [str(f) for f in files]
    assert all(item["class"] in CLASSES and len(item["top"]) == 2 for item in items)
    plain = run("predict", out, files[0], workspace / "train" / "dark" / "broken.png")
    assert plain.stdout.count("\t") >= 2 and "skipped" in plain.stderr

    evaluated = run("evaluate", out, workspace / "test", "--json")
    result = json.loads(evaluated.stdout)
    assert result["images"] == 12 and set(result["per_class_accuracy"]) == set(CLASSES)
    assert np.array(result["confusion_matrix"]).sum() == 12

    again = _fit(workspace, out, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    other = tmp_path / "other"
    (other / "a").mkdir(parents=True)
    (other / "b").mkdir()
    for name in ("a", "b"):
        _write_png(other / name / "0.png", np.zeros((8, 8, 3)))
    mismatch = run("evaluate", out, other, check=False)
    assert mismatch.returncode == 1 and "no folder for classes" in mismatch.stderr

    exported = run("export", out, tmp_path / "models")
    assert (tmp_path / "models" / "1" / "saved_model.pb").is_file()
    assert "exported to" in exported.stdout
    again = run("export", out, tmp_path / "models", "--version", 1, check=False)
    assert again.returncode == 1 and "overwrite" in again.stderr


def test_seed_makes_runs_repeatable(workspace, tmp_path):
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        _fit(workspace, out, "--validation-split", 0)
        files = sorted((workspace / "test" / "dark").glob("*.png"))
        outputs.append(json.loads(run("predict", out, *files, "--json").stdout))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    "args, reason",
    [
        (["fit", "nowhere", "--out", "x"], "data folder not found"),
        (["fit", ".", "--out", "x", "--epochs", "0"], "positive integer"),
        (["fit", ".", "--out", "x", "--validation-split", "1.5"], r"\[0, 1\)"),
        (["fit", ".", "--out", "x", "--strategy", "all"], "invalid choice"),
        (["fit", ".", "--out", "x", "--backbone", "resnet5"], "resnet50"),
        (["fit", "."], "--out"),
        (["predict", "nowhere", "a.png"], "no model at"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_usage_and_reason(args, reason):
    result = run(*args, check=False)
    assert result.returncode == 2
    assert "usage: keras-transfer" in result.stderr
    assert re.search(reason, result.stderr), result.stderr


def test_empty_class_or_single_class_fails_before_training(workspace, tmp_path):
    data = tmp_path / "data"
    (data / "only").mkdir(parents=True)
    _write_png(data / "only" / "a.png", np.zeros((8, 8, 3)))
    args = (
        "fit",
        data,
        "--out",
        tmp_path / "o",
        "--backbone",
        workspace / "tiny.keras",
        "--image-size",
        SIZE,
    )
    result = run(*args, check=False)
    assert result.returncode == 1 and "at least two classes" in result.stderr
    (data / "empty").mkdir()
    result = run(*args, check=False)
    assert result.returncode == 1 and "no readable image" in result.stderr
    assert not (tmp_path / "o").exists()


def test_backbones_lists_names_sizes_and_offline_weights():
    result = run("backbones")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "input", "size"]
    row = next(line for line in lines if line.startswith("efficientnet_lite0 "))
    assert "224" in row and "packaged" in row
    assert any(line.startswith("mobilenet_v3_small ") for line in lines)
