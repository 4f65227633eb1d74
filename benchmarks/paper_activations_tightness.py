"""DeepPoly output-bound widths with the paper activations' own relaxations vs. the same nets
lowered to generic ops (clip + sum, max_group; ``certkit.graph.lower``), which is what an
importer without pattern recognition would give.

    python benchmarks/paper_activations_tightness.py     # a few seconds

30 random nets 6-16-16-4 per activation (``tests/test_paper_activations.paper_net``), input
boxes of half-width 0.3, DeepPoly with interval intersection; sum of output-bound widths
(smaller is tighter). Both are sound (tests/test_paper_activations.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from certkit.bounds.deeppoly import deeppoly_output_bounds  # noqa: E402
from certkit.graph.lower import lower_paper_ops  # noqa: E402
from certkit.spec.sets import InputSet  # noqa: E402
from tests.test_paper_activations import paper_net  # noqa: E402


def main() -> None:
    print(f"{'activation':<12} {'own relaxation':>15} {'lowered':>10}")
    for act in ("n", "capped", "max_min"):
        own = low = 0.0
        for seed in range(30):
            g = paper_net(act, seed, sizes=(6, 16, 16, 4))
            c = np.random.default_rng(seed).uniform(0, 1, 6)
            s = InputSet.box(c - 0.3, c + 0.3)
            lo, hi = deeppoly_output_bounds(g, s, True)
            own += float((hi - lo).sum())
            lo, hi = deeppoly_output_bounds(lower_paper_ops(g), s, True)
            low += float((hi - lo).sum())
        print(f"{act:<12} {own:15.2f} {low:10.2f}")


if __name__ == "__main__":
    main()
