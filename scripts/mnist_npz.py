"""Write a slice of ../shared/data/mnist.npz as a certkit data set (x in [0, 1], shape (N, 784)).

    python scripts/mnist_npz.py --start 200 --count 200 -o /tmp/mnist_200_400.npz
"""
from __future__ import annotations

import argparse
import os

import numpy as np

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist.npz")


def mnist_slice(start: int, count: int, path: str = DEFAULT, flat: bool = True) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(path)
    x = d["x_test"][start:start + count].astype(np.float32) / 255.0
    x = x.reshape(len(x), -1) if flat else x.reshape(len(x), 1, 28, 28)
    return x, d["y_test"][start:start + count].astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--start", type=int, default=200)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--mnist", default=DEFAULT)
    ap.add_argument("--image", action="store_true", help="shape (N, 1, 28, 28) instead of (N, 784)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    x, y = mnist_slice(a.start, a.count, a.mnist, not a.image)
    np.savez_compressed(a.out, x=x, y=y)
    print(f"wrote {a.out}: x {x.shape}, y {y.shape}")


if __name__ == "__main__":
    main()
