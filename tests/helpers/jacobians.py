"""Sampled Jacobian norms: the attack every Lipschitz bound of certkit.lipschitz must survive."""
from __future__ import annotations

import numpy as np
import torch

from certkit.graph.graph import Graph


def jacobian_norms(g: Graph, p: float, n: int = 200, seed: int = 0) -> np.ndarray:
    """||J(x)||_p (operator norm, p = 2 or inf) at random points: uniform in [0, 1] and normal (sd 2)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.random((n // 2, g.n_inputs)), rng.normal(0, 2, (n - n // 2, g.n_inputs))])
    jac = torch.func.vmap(torch.func.jacrev(lambda z: g.forward(z[None])[0]))(torch.as_tensor(x))  # (n, out, in)
    if p == float("inf"):
        return jac.abs().sum(-1).amax(-1).numpy()
    return torch.linalg.matrix_norm(jac, ord=2).numpy()
