"""Speed of the ``nonneg`` Lipschitz bound (power iteration + Collatz-Wielandt, DESIGN.md
section 4) on nonnegative nets with about 10^7 weights, dense and convolutional.

    python benchmarks/lipschitz_speed.py

Target (issue 4): under 1 s for 10^7 weights on these machines (one torch thread). The
figure printed is the wall time of ``lipschitz_bounds(g, norm, "nonneg", lower=False)``,
the import of the model excluded (the IR is built in memory).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from certkit.graph import ops
from certkit.graph.graph import Graph, Node
from certkit.lipschitz import lipschitz_bounds


def dense_net(sizes, seed=0) -> Graph:
    rng = np.random.default_rng(seed)
    nodes, shapes = [Node("input", ops.Input(), ())], [(1, sizes[0])]
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.random((b, a), dtype=np.float32).astype(np.float64) / np.sqrt(a)
        nodes.append(Node(f"fc{k}", ops.Dense(w, np.zeros(b)), (len(nodes) - 1,)))
        shapes.append((1, b))
        if k < len(sizes) - 2:
            nodes.append(Node(f"relu{k}", ops.Relu(), (len(nodes) - 1,)))
            shapes.append((1, b))
    return Graph(tuple(nodes), tuple(shapes), len(nodes) - 1)


def conv_net(seed=0) -> Graph:
    """Three 3x3 convolutions 64 -> 256 -> 256 -> 256 channels on 16x16 (pad 1), ReLU, then
    Dense to 10: 1.4M conv weights applied at 256 positions (3.6 10^8 multiply-adds per pass)."""
    rng = np.random.default_rng(seed)
    nodes, shapes = [Node("input", ops.Input(), ())], [(1, 64, 16, 16)]
    c = 64
    for k, co in enumerate((256, 256, 256)):
        w = rng.random((co, c, 3, 3)) / np.sqrt(9 * c)
        nodes.append(Node(f"conv{k}", ops.Conv(w, None, (c, 16, 16), (co, 16, 16), (1, 1), (1, 1, 1, 1)),
                          (len(nodes) - 1,)))
        shapes.append((1, co, 16, 16))
        nodes.append(Node(f"relu{k}", ops.Relu(), (len(nodes) - 1,)))
        shapes.append((1, co, 16, 16))
        c = co
    nodes.append(Node("fc", ops.Dense(rng.random((10, c * 256)) / np.sqrt(c * 256), None), (len(nodes) - 1,)))
    shapes.append((1, 10))
    return Graph(tuple(nodes), tuple(shapes), len(nodes) - 1)


def n_weights(g: Graph) -> int:
    return sum(int(np.size(n.op.weight)) for n in g.nodes if hasattr(n.op, "weight"))


def main() -> None:
    torch.set_num_threads(1)
    nets = {"dense 784-2048-2048-2048-10": dense_net((784, 2048, 2048, 2048, 10)),
            "dense 1000-3000-2000-10": dense_net((1000, 3000, 2000, 10)),
            "conv 64-256-256-256 @16x16 + dense": conv_net()}
    print(f"{'net':<38} {'weights':>10} {'norm':>5} {'first s':>8} {'again s':>8} {'iters':>6} {'upper':>12}"
          "  (target < 1 s)")
    for name, g in nets.items():
        for norm in ("2", "inf"):
            t = time.perf_counter()
            lipschitz_bounds(g, norm, "nonneg", lower=False)  # first call: also builds the weight tensors
            t1 = time.perf_counter()
            r = lipschitz_bounds(g, norm, "nonneg", lower=False)
            t2 = time.perf_counter()
            it = r.methods["nonneg"].details.get("iterations", 0)
            print(f"{name:<38} {n_weights(g):>10,} {norm:>5} {t1 - t:>8.3f} {t2 - t1:>8.3f} {it:>6} {r.upper:>12.6g}")


if __name__ == "__main__":
    main()
