"""How long `TransferModel("efficientnet_lite0", num_classes=5)` takes to build.

Each measurement is a fresh Python process with its own empty Keras home, so
the first build converts the PyTorch checkpoint and writes the cache, and the
second reads the cache; the network is unreachable (a closed proxy), so any
download attempt would fail. Times exclude `import keras_transfer` (TensorFlow's
import, about 5 s), which is printed separately.

Run: python benchmarks/zoo_load_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, time
start = time.perf_counter()
import keras_transfer as kt
imported = time.perf_counter()
model = kt.TransferModel("efficientnet_lite0", num_classes=5)
built = time.perf_counter()
print(json.dumps({"import": imported - start, "build": built - imported}))
"""


def run_child(keras_home: str) -> dict[str, float]:
    env = dict(
        os.environ,
        KERAS_HOME=keras_home,
        TF_CPP_MIN_LOG_LEVEL="3",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as home:
            first = run_child(home)
            second = run_child(home)
        rows.append((first, second))
    print("| run | import keras_transfer | first build (converts) | cached build |")
    print("|---|---|---|---|")
    for i, (first, second) in enumerate(rows, 1):
        print(
            f"| {i} | {first['import']:.1f} s | {first['build']:.2f} s | "
            f"{second['build']:.2f} s |"
        )
    ratio = sum(f["build"] for f, _ in rows) / sum(s["build"] for _, s in rows)
    print(f"\nfirst build / cached build: {ratio:.2f}x")


if __name__ == "__main__":
    main()
