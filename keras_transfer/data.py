"""Image folders (one subfolder per class) as arrays and tf.data pipelines.

The layout every tool uses: `data/<class name>/<image files>`. Every file is
decoded once, up front: an unreadable or corrupt file is skipped and listed,
so it can never stop training mid-epoch; an empty class folder, or fewer than
two classes, is an error before anything trains.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class ImageFolder:
    """Decoded images of a folder.

    Attributes:
        images: uint8 array `(n, height, width, channels)`.
        labels: int array `(n,)`, indices into `class_names`.
        class_names: the subfolder names, sorted.
        files: the path of each image.
        skipped: `(path, reason)` of each file that could not be decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    files: list[str]
    skipped: list[tuple[str, str]]

    def split(self, fraction: float, seed: int = 0):
        """(train, validation): a stratified split, `fraction` held out."""
        from sklearn.model_selection import train_test_split

        counts = np.bincount(self.labels, minlength=len(self.class_names))
        if not 0 < fraction < 1 or (counts * fraction < 1).any():
            raise ValueError(
                f"Cannot hold out {fraction} of each class for validation: the "
                f"smallest class has {counts.min()} images. Pass a validation "
                "folder, a larger fraction, or 0 for no validation."
            )
        train, held_out = train_test_split(
            np.arange(len(self.labels)),
            test_size=fraction,
            random_state=seed,
            stratify=self.labels,
        )
        return self._subset(np.sort(train)), self._subset(np.sort(held_out))

    def _subset(self, index):
        return ImageFolder(
            self.images[index],
            self.labels[index],
            self.class_names,
            [self.files[i] for i in index],
            [],
        )


def read_image(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """Decodes one image file to uint8 `(height, width, channels)`, resized.

    Raises:
        ValueError: if the file is not a readable image.
    """
    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    except tf.errors.OpError as error:  # corrupt, missing, unreadable, a folder
        # TensorFlow wraps the decoder's words in op details: keep the words.
        message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", str(error)).strip()
        reason = message.splitlines()[0] if message else type(error).__name__
        raise ValueError(f"not a readable image ({reason})") from None
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("empty image")
    image = tf.image.resize(image, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()


def load_image_folder(
    directory: str,
    image_size: int | tuple[int, int],
    *,
    channels: int = 3,
    class_names: list[str] | None = None,
) -> ImageFolder:
    """Reads `directory/<class>/<image>` into memory.

    Args:
        directory: str. One subfolder per class; files with the extensions
            in `IMAGE_EXTENSIONS` are read (others are ignored).
        image_size: int or (height, width). Every image is resized to it.
        channels: int. 3 (RGB) or 1 (grayscale).
        class_names: list of str or None. Expected classes (e.g. those of a
            trained model); None takes the subfolders, sorted.

    Raises:
        FileNotFoundError: if `directory` does not exist.
        ValueError: if there are fewer than two classes, a class folder has no
            readable image, or `class_names` names a missing folder.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder not found: {directory!r}. Pass a folder with one "
            "subfolder of images per class."
        )
    found = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    names = list(class_names) if class_names is not None else found
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(
            f"{directory!r} has no folder for classes {missing}; it has {found}."
        )
    if len(names) < 2:
        raise ValueError(
            f"{directory!r} has {len(names)} class folder(s) {names}; transfer "
            "learning needs at least two classes, one subfolder each."
        )
    images, labels, files, skipped = [], [], [], []
    for index, name in enumerate(names):
        folder = os.path.join(directory, name)
        paths = sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        read = 0
        for path in paths:
            try:
                images.append(read_image(path, size, channels))
            except ValueError as error:
                skipped.append((path, str(error)))
                continue
            labels.append(index)
            files.append(path)
            read += 1
        if read == 0:
            raise ValueError(
                f"Class folder {folder!r} has no readable image ({len(paths)} "
                f"image file(s) found, extensions {IMAGE_EXTENSIONS}). Add images "
                "or remove the folder."
            )
    return ImageFolder(np.stack(images), np.array(labels), names, files, skipped)


def resize_images(images, size) -> np.ndarray:
    """Resizes a batch of images (bilinear, Keras' `Resizing`) to float32.

    Args:
        images: array `(n, height, width, channels)`.
        size: int or (height, width).

    Returns:
        float32 array `(n, *size, channels)`, resized in chunks of 256 images
        to bound memory; the images as float32 if they already have that size.
    """
    import keras

    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    images = np.asarray(images, dtype="float32")
    if images.shape[1:3] == (height, width):
        return images
    layer = keras.layers.Resizing(height, width)
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(layer(images[i : i + 256]))
            for i in range(0, len(images), 256)
        ]
    )


def make_dataset(
    images,
    labels=None,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int | None = None,
) -> tf.data.Dataset:
    """A tf.data pipeline over in-memory images: shuffle, batch, prefetch."""
    data = (images,) if labels is None else (images, labels)
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(
        lambda x, *y: (tf.cast(x, tf.float32), *y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
