"""Shared test set-up."""
from __future__ import annotations

import pytest
import torch

from certkit import cluster

#: the unpatched default of ``--threads`` (the session pins it to one below), for its own test
REAL_USABLE_CPUS = cluster.usable_cpus


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Small nets: one torch thread is fastest, and far faster on a busy 2-core machine. The CLI's
    default (every usable CPU, ``certkit.cluster.usable_cpus``) is pinned to one here too, so that a
    test calling ``main`` leaves the session on one thread; tests of the default itself patch it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setattr("certkit.cluster.usable_cpus", lambda: 1)
    yield
    mp.undo()
    torch.set_num_threads(n)
