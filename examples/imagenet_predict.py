"""See the pretrained network recognise things before transferring it, offline.

Builds EfficientNet-Lite0 with its ImageNet classifier (weights shipped with
the package, converted from PyTorch on first use and cached under
$KERAS_HOME) and prints the top-5 ImageNet classes for photos bundled with
scikit-image, or for your own image files.

Run: python examples/imagenet_predict.py [image files...]
     [--model efficientnet_lite0|mobilenet_v2_torchvision] [--weights PATH]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_transfer as kt  # noqa: E402

SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SIZE = 224


def load_photos(paths: list[str]) -> dict[str, np.ndarray]:
    """0-255 RGB arrays by name: the given files, or scikit-image's photos."""
    if paths:
        return {
            path: keras.utils.img_to_array(keras.utils.load_img(path)) for path in paths
        }
    from skimage import data

    return {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "images", nargs="*", help="image files (default: skimage photos)"
    )
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        choices=["efficientnet_lite0", "mobilenet_v2_torchvision"],
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' or a PyTorch checkpoint path (mobilenet_v2-b0353104.pth)",
    )
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    if args.model == "efficientnet_lite0":
        model = kt.efficientnet_lite(0, weights=args.weights)
    else:
        model = kt.mobilenet_v2_torchvision(weights=args.weights)
    seconds = time.perf_counter() - start
    print(f"{args.model} with its ImageNet classifier, ready in {seconds:.1f} s")

    photos = load_photos(args.images)
    # Centre crop to a square, then resize: what the network was evaluated on.
    resize = keras.layers.Resizing(SIZE, SIZE, crop_to_aspect_ratio=True)
    batch = np.stack(
        [
            keras.ops.convert_to_numpy(resize(image.astype("float32")))
            for image in photos.values()
        ]
    )
    predictions = model.predict(batch, verbose=0)
    for name, top in zip(
        photos, kt.decode_imagenet(predictions, top=args.top), strict=True
    ):
        print(f"\n{name}:")
        for wordnet_id, label, score in top:
            print(f"  {score:6.1%}  {label}  ({wordnet_id})")


if __name__ == "__main__":
    main()
