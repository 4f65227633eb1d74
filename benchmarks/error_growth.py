"""How the float32 error terms grow through a VGG16-sized net (vggnet16_2023's architecture), at one point.

Usage: python benchmarks/error_growth.py [--seed 0] [--keep DIR]
Exit codes: 0, 2 (bad arguments, or a --keep folder that cannot be written).

Builds VGG16 (13 convolutions, 5 max-pools, 3 dense layers, 224x224x3 input, 138M weights) with He-normal
random weights in torch, exports it to ONNX (553 MB, in a temporary folder unless ``--keep``), and bounds it
at one input point (a box of width 0) with certkit's interval arithmetic: there the bounds' widths are the
float32 error terms alone (``certkit/bounds/fperror.py``: ``gamma_S |W| |x|`` per affine node) and their
propagation, ``|W|`` times the widths below at every layer. Prints, per layer, the largest magnitude of the
value, the largest error charged at the node and the largest width, then the lower bound of the spec row
``y_top1 - y_top2`` at the point (interval, and forward mode over a box of 5 pixels of radius 1e-3) beside its
value in onnxruntime. Real VGG16 weights are not random, but interval propagation multiplies widths by
``|W|`` at every layer whatever the weights' signs; the exact effect of an error on the output goes through
the signed products ``W_L D ... W_i`` (back-substitution), which on a 224x224 net costs one row per neuron.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build(path: str, seed: int) -> np.ndarray:
    """Export the random VGG16 to ``path``; returns the input point (1, 3, 224, 224)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        conv = nn.Conv2d(c, v, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.normal_(conv.bias, 0, 0.01)
        layers += [conv, nn.ReLU()]
        c = v
    head = [nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000)]
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    net = nn.Sequential(*layers, nn.Flatten(), *head).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(net, x, path, input_names=["data"], output_names=["out"], opset_version=13, dynamo=False)
    return x.numpy()


def _seed(text: str) -> int:
    n = int(text)
    if not 0 <= n < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=_seed, default=0)
    ap.add_argument("--keep", metavar="DIR", help="write the model here and keep it")
    a = ap.parse_args(argv)
    if a.keep is None:
        with tempfile.TemporaryDirectory(prefix="certkit_vgg_") as folder:  # 553 MB: removed afterwards
            return _run(os.path.join(folder, "vgg16_random.onnx"), a.seed)
    try:
        os.makedirs(a.keep, exist_ok=True)
        path = os.path.join(a.keep, "vgg16_random.onnx")
        open(path, "ab").close()
    except OSError as e:
        print(f"error_growth: cannot write the model in {a.keep}: {e.strerror}", file=sys.stderr)
        return 2
    return _run(path, a.seed)


def _run(path: str, seed: int) -> int:
    """Build the net at ``path``, bound it, print the table (module docstring)."""
    import onnxruntime as ort
    import torch

    from certkit.api import load_model
    from certkit.bounds.backends import forward_lower, interval_lower
    from certkit.bounds.interval import interval_bounds
    from certkit.spec.sets import InputSet

    torch.set_num_threads(2)
    t = time.monotonic()
    x = build(path, seed)
    print(f"built and exported {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.monotonic() - t:.1f} s")
    y = ort.InferenceSession(path).run(None, {"data": x})[0].ravel()
    top1, top2 = (int(i) for i in np.argsort(-y)[:2])
    t = time.monotonic()
    model = load_model(path)
    print(f"certkit loaded it in {time.monotonic() - t:.1f} s; onnxruntime's y_top1 - y_top2 = {y[top1] - y[top2]:.4f}")
    g = model.graph
    point = torch.as_tensor(x.reshape(1, -1), dtype=torch.float64)
    errors: dict = {}
    bounds = interval_bounds(g, InputSet(point, point), errors=errors)
    print(f"{'node':>4} {'op':<9} {'neurons':>9} {'max |value|':>12} {'max error':>10} {'max width':>10}")
    for i, (node, b) in enumerate(zip(g.nodes, bounds)):
        if b is None or i == 0 or type(node.op).__name__ == "Relu":
            continue
        lo, hi = b
        e = errors.get(i)
        err = f"{float(e.max()):10.3g}" if e is not None else f"{'-':>10}"
        print(f"{i:>4} {type(node.op).__name__:<9} {lo.shape[-1]:>9} {float(torch.maximum(lo.abs(), hi.abs()).max()):12.3g} "
              f"{err} {float((hi - lo).max()):10.3g}")
    C = torch.zeros(1, 1, y.size, dtype=torch.float64)
    C[0, 0, top1], C[0, 0, top2] = 1.0, -1.0
    print(f"lower bound of y_top1 - y_top2 at the point, interval: {float(interval_lower(g, InputSet(point, point), C)):.4g}")
    rng = np.random.default_rng(seed)
    free = rng.choice(point.shape[1], 5, replace=False)
    r = torch.zeros_like(point)
    r[0, free] = 1e-3
    t = time.monotonic()
    low = float(forward_lower(g, InputSet(point - r, point + r), C))
    print(f"over 5 pixels of radius 1e-3, forward mode: {low:.4g} ({time.monotonic() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
