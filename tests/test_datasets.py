import numpy as np
import pytest

from keras_transfer import datasets


def test_few_shot_split_takes_per_class_and_keeps_the_rest_for_testing():
    labels = np.repeat(np.array(["cat", "dog", "fox"]), [5, 7, 4])
    train, test = datasets.few_shot_split(labels, per_class=3, seed=1)
    assert sorted(np.unique(labels[train], return_counts=True)[1]) == [3, 3, 3]
    assert np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).tolist() == list(range(len(labels)))
    again, _ = datasets.few_shot_split(labels, per_class=3, seed=1)
    assert np.array_equal(train, again)


@pytest.mark.parametrize("per_class", [0, 4])
def test_few_shot_split_refuses_a_class_left_without_test_examples(per_class):
    labels = np.repeat([0, 1], [10, 4])
    with pytest.raises(ValueError, match=f"per_class={per_class}.*rarest class has 4"):
        datasets.few_shot_split(labels, per_class=per_class)


def test_load_digits_is_a_ten_shot_image_task_in_pixel_range():
    (x_train, y_train), (x_test, y_test) = datasets.load_digits(per_class=10, seed=0)
    assert x_train.shape == (100, 8, 8, 1) and x_train.dtype == np.float32
    assert np.bincount(y_train).tolist() == [10] * 10
    assert len(x_test) == 1797 - 100 and len(y_test) == len(x_test)
    assert x_train.min() == 0 and x_train.max() == 255


def test_read_image_refuses_a_folder_and_a_missing_file(tmp_path):
    from keras_transfer.data import read_image

    for path in (tmp_path, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match="not a readable image"):
            read_image(str(path), (8, 8), 3)
