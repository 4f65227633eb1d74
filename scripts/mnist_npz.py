"""Write a slice of ../shared/data/mnist.npz as a certkit data set (x in [0, 1], shape (N, 784)).

    python scripts/mnist_npz.py --start 200 --count 200 -o /tmp/mnist_200_400.npz

Without the MNIST file (no ../shared beside the repository, or a wrong --mnist) it prints one line
naming the missing file and exits 2, as certkit's usage errors do.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile

import numpy as np

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist.npz")


def mnist_slice(start: int, count: int, path: str = DEFAULT, flat: bool = True) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(path)
    x = d["x_test"][start:start + count].astype(np.float32) / 255.0
    x = x.reshape(len(x), 28 * 28) if flat else x.reshape(len(x), 1, 28, 28)
    return x, d["y_test"][start:start + count].astype(np.int64)


def _fail(msg: str) -> None:
    print(f"mnist_npz: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--mnist", default=DEFAULT, help="the MNIST .npz (x_test, y_test); default ../shared/data/mnist.npz")
    ap.add_argument("--image", action="store_true", help="shape (N, 1, 28, 28) instead of (N, 784)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    if a.start < 0 or a.count < 1:
        _fail(f"--start {a.start} --count {a.count}: needs start >= 0 and count >= 1")
    path = os.path.normpath(a.mnist)
    if not os.path.isfile(path):
        _fail(f"{path}: no such file (the MNIST test set: ../shared/data/mnist.npz beside the repository, "
              "or give --mnist PATH)")
    try:
        x, y = mnist_slice(a.start, a.count, path, not a.image)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        _fail(f"{path}: not an MNIST .npz with x_test and y_test ({type(e).__name__}: {e})")
    if len(x) == 0:
        _fail(f"{path}: --start {a.start} is past the end of the test set")
    try:
        np.savez_compressed(a.out, x=x, y=y)
    except OSError as e:
        _fail(f"-o {a.out}: cannot write ({e.strerror or e})")
    print(f"wrote {a.out}: x {x.shape}, y {y.shape}")


if __name__ == "__main__":
    main()
