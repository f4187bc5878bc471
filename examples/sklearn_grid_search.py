"""Transfer learning as scikit-learn estimators: pipelines and grid search.

On a few labelled images per class (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, else scikit-learn's digits), offline:
  1. the cheapest strong baseline: pretrained EfficientNet-Lite0 embeddings
     (`TransferFeatures`) into a logistic regression, its C tuned by
     GridSearchCV (features cached by the pipeline's memory);
  2. `TransferClassifier`, a new head trained on the frozen backbone, with
     GridSearchCV over its learning rate and dropout (stratified 3-fold CV).
Both are scored on held-out images.

Run: python examples/sklearn_grid_search.py [--per-class 30] [--size 96]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.base import is_classifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, check_cv  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

import keras_transfer as kt  # noqa: E402


def load(dataset, per_class, test_size, seed):
    if dataset == "fashion":
        (x, y), (x_test, y_test) = kt.datasets.load_fashion_mnist()
        names = np.array(kt.datasets.FASHION_MNIST_CLASSES)
        rng = np.random.default_rng(seed)
        train = np.concatenate(
            [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)]
        )
        test = rng.permutation(len(y_test))[:test_size]
        return (x[train], names[y[train]]), (x_test[test], names[y_test[test]])
    (x, y), (x_test, y_test) = kt.datasets.load_digits(per_class, seed)
    names = np.array([f"digit {d}" for d in range(10)])
    return (x, names[y]), (x_test[:test_size], names[y_test[:test_size]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("fashion", "digits"), default=None)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = args.dataset or (
        "fashion" if os.path.isdir(kt.datasets.FASHION_MNIST_DIR) else "digits"
    )
    (x, y), (x_test, y_test) = load(dataset, args.per_class, args.test_size, args.seed)
    print(
        f"{dataset}: {len(x)} training images ({args.per_class} per class, labels "
        f"like {str(y[0])!r}), {len(x_test)} test images, resized to {args.size} px"
    )

    # 1. Frozen embeddings + logistic regression; the pipeline's memory caches
    # the embeddings, so each fold computes them once for all values of C.
    start = time.time()
    with tempfile.TemporaryDirectory() as cache:
        pipeline = Pipeline(
            [
                ("features", kt.TransferFeatures(image_size=args.size)),
                ("logistic", LogisticRegression(max_iter=2000)),
            ],
            memory=cache,
        )
        search = GridSearchCV(pipeline, {"logistic__C": [0.1, 1.0, 10.0]}, cv=3)
        search.fit(x, y)
        features_accuracy = search.score(x_test, y_test)
    print(
        f"TransferFeatures + LogisticRegression: best {search.best_params_}, "
        f"CV accuracy {search.best_score_:.3f}, test accuracy "
        f"{features_accuracy:.3f} ({time.time() - start:.0f} s)",
        flush=True,
    )

    # 2. A new head on the frozen backbone, tuned by grid search.
    start = time.time()
    classifier = kt.TransferClassifier(
        image_size=args.size,
        strategy="head_only",
        epochs=args.epochs,
        random_state=args.seed,
    )
    grid = {"learning_rate": [1e-3, 3e-3], "dropout": [0.0, 0.3]}
    search = GridSearchCV(classifier, grid, cv=3)
    search.fit(x, y)
    splitter = check_cv(3, y, classifier=is_classifier(classifier))
    print(f"is_classifier: {is_classifier(classifier)}, so cv=3 is {splitter}")
    for params, score in zip(
        search.cv_results_["params"],
        search.cv_results_["mean_test_score"],
        strict=True,
    ):
        print(f"  {params}: CV accuracy {score:.3f}")
    classifier_accuracy = search.score(x_test, y_test)
    print(
        f"TransferClassifier: best {search.best_params_}, CV accuracy "
        f"{search.best_score_:.3f}, test accuracy {classifier_accuracy:.3f} "
        f"({time.time() - start:.0f} s)"
    )
    print(
        f"predicted: {[str(c) for c in search.predict(x_test[:3])]}, "
        f"true: {[str(c) for c in y_test[:3]]}"
    )

    print("\n| estimator (test accuracy) | accuracy |\n|---|---|")
    print(f"| TransferFeatures + LogisticRegression | {features_accuracy:.3f} |")
    print(f"| TransferClassifier (head only) | {classifier_accuracy:.3f} |")


if __name__ == "__main__":
    main()
