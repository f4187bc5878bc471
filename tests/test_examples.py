import os
import re
import subprocess
import sys

import keras
import pytest

import keras_transfer as kt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example_offline(name, keras_home, *args):
    """Runs examples/<name> with an empty Keras home and no network."""
    env = dict(
        os.environ,
        KERAS_HOME=str(keras_home),
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_demo_runs_offline_and_writes_its_report(tmp_path):
    env = dict(
        os.environ,
        KERAS_HOME=str(tmp_path / "keras_home"),
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_transfer.cli",
            "demo",
            "--dataset",
            "digits",
            "--per-class",
            "3",
            "--test-size",
            "60",
            "--image-size",
            "32",
            "--head-epochs",
            "3",
            "--fine-tune-epochs",
            "1",
            "--scratch-epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(
        r"^\| ((?:from|transfer)[^|]+) \| (\d\.\d+) \|", result.stdout, re.M
    )
    assert [name for name, _ in rows] == list(kt.demo.RECIPES)
    for name in (
        "report.md",
        "training_curves.png",
        "confusion_matrix.png",
        "history.csv",
        "model.keras",
    ):
        assert (out / name).is_file(), name
    assert "![training curves](training_curves.png)" in (out / "report.md").read_text()
    model = keras.saving.load_model(str(out / "model.keras"))
    assert type(model) is kt.TransferModel and model.num_classes == 10
    assert model.backbone.spec_name == "efficientnet_lite0"


@pytest.mark.slow
def test_imagenet_predict_recognises_photos_offline(tmp_path):
    pytest.importorskip("skimage")
    stdout = run_example_offline("imagenet_predict.py", tmp_path)
    sections = re.findall(r"^(\w+):\n((?:  .+\n?){5})", stdout, re.M)
    top1 = {
        name: lines.splitlines()[0].split("%")[1].split("(")[0].strip()
        for name, lines in sections
    }
    assert top1["chelsea"] == "Egyptian cat"
    assert top1["coffee"] == "espresso"
    assert set(top1) == {"chelsea", "coffee", "astronaut", "rocket"}


@pytest.mark.slow
def test_hub_backbone_example_fine_tunes_saves_and_exports(tmp_path):
    stdout = run_example_offline(
        "hub_backbone.py",
        tmp_path,
        *("--out", str(tmp_path), "--head-epochs", "2", "--fine-tune-epochs", "1"),
    )
    moved = float(re.search(r"weights moved by up to (\S+)\)", stdout).group(1))
    assert moved > 0
    reload_diff = float(re.search(r"max prediction difference (\S+)$", stdout, re.M)[1])
    export_diff = float(re.search(r"difference to predict (\S+)$", stdout, re.M)[1])
    assert reload_diff <= 1e-5 and export_diff <= 1e-5
    model = keras.saving.load_model(str(tmp_path / "digits_hub.keras"))
    assert type(model) is kt.TransferModel and model.num_classes == 10


@pytest.mark.slow
def test_fine_tune_schedules_example_trains_and_resumes(tmp_path):
    stdout = run_example_offline(
        "fine_tune_schedules.py",
        tmp_path,
        *("--out", str(tmp_path), "--head-epochs", "2", "--tune-epochs", "8"),
    )
    rows = re.findall(r"^\| (.+?) \| (0\.\d+|1\.0+) \| \d+ s \|$", stdout, re.M)
    assert [name.split(" (")[0] for name, _ in rows] == [
        "model.fine_tune",
        "model.fine_tune",
        "GradualUnfreeze",
        "GradualUnfreeze + L2-SP",
    ]
    assert "fine_tune: one History of 10 epochs" in stdout
    # Stages at epochs 3 and 7; interrupted at epoch 6, resumed there at stage 1.
    assert "epoch 7: 4 of 8 backbone groups trainable" in stdout
    assert "resumed at epoch 6 with 2 of 8 backbone groups trainable" in stdout
    model = keras.saving.load_model(str(tmp_path / "digits_gradual.keras"))
    assert isinstance(model.optimizer, kt.GroupedOptimizer)


@pytest.mark.slow
def test_add_classes_lwf_prints_its_table(tmp_path):
    stdout = run_example_offline(
        "add_classes_lwf.py",
        tmp_path,
        "--dataset",
        "digits",
        "--size",
        "32",
        "--per-class",
        "20",
        "--test-per-class",
        "30",
        "--epochs",
        "3",
        "--new-epochs",
        "2",
        "--rehearsal",
        "5",
    )
    rows = re.findall(
        r"^\| ([^|]+) \| (\d\.\d+) \| (-|\d\.\d+) \| (\d\.\d+) \|$", stdout, re.M
    )
    assert [row[0] for row in rows] == [
        "before (7 classes)",
        "plain fine-tuning",
        "Learning without Forgetting",
        "plain + 5 old images per class",
        "LwF + 5 old images per class",
    ]
    # New classes are learnt by every recipe (chance is 0.1 over 10 outputs).
    assert all(float(row[2]) > 0.3 for row in rows[1:])


@pytest.mark.slow
def test_sklearn_grid_search_runs_offline(tmp_path):
    stdout = run_example_offline(
        "sklearn_grid_search.py",
        tmp_path,
        "--dataset",
        "digits",
        "--per-class",
        "6",
        "--size",
        "32",
        "--epochs",
        "1",
        "--test-size",
        "60",
    )
    assert "is_classifier: True, so cv=3 is StratifiedKFold" in stdout
    rows = re.findall(r"^\| (Transfer[^|]+) \| (\d\.\d+) \|$", stdout, re.M)
    assert [name for name, _ in rows] == [
        "TransferFeatures + LogisticRegression",
        "TransferClassifier (head only)",
    ]
    assert float(rows[0][1]) > 0.2  # chance is 0.1


@pytest.mark.slow
def test_export_serving_example_answers_like_predict(tmp_path):
    stdout = run_example_offline(
        "export_serving.py", tmp_path, "--out", str(tmp_path), "--epochs", "2"
    )
    differences = re.findall(r"max \|served - predict\| = (\S+)", stdout)
    assert len(differences) == 2 and all(float(d) < 1e-5 for d in differences)
    assert "variables unchanged after three serving calls: True" in stdout
    assert os.path.isfile(tmp_path / "digits" / "1" / "assets" / "labels.txt")
