"""certkit.malloc: a dedicated process keeps freed blocks for reuse, the memory budget does not count
them as used, and CERTKIT_MALLOC=default leaves glibc alone. Each case runs in a fresh interpreter
(the settings are per process; the test process's own allocator is left as it is)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from certkit.malloc import _libc

pytestmark = pytest.mark.skipif(_libc() is None, reason="glibc only (mallopt, mallinfo2)")

_PROBE = r"""
import json, sys
from certkit.malloc import tune, held_free
from certkit.bounds.memory import rss

def resident():
    import os
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

tuned = tune(dedicated=sys.argv[1] == "1")
before = rss()
block = bytearray(200 << 20)  # 200 MiB, touched (zero-filled)
block[::4096] = b"x" * len(block[::4096])
del block
print(json.dumps({"tuned": tuned, "held": held_free(), "resident": resident(), "rss": rss(),
                  "before": before}))
"""


def _probe(dedicated: bool, setting: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("CERTKIT_MALLOC", None)
    if setting is not None:
        env["CERTKIT_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", _PROBE, "1" if dedicated else "0"], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out)


def test_a_dedicated_process_keeps_a_freed_block_and_the_budget_does_not_count_it():
    r = _probe(dedicated=True)
    assert r["tuned"]
    assert r["held"] >= 190 << 20  # kept for reuse, not unmapped
    assert r["resident"] >= 190 << 20  # still resident ...
    assert r["rss"] - r["before"] < 32 << 20  # ... but not in use


def test_a_shared_process_gives_a_large_freed_block_back():
    r = _probe(dedicated=False)  # mmap above 32 MiB: a 200 MiB block is unmapped when freed
    assert r["tuned"]
    assert r["held"] < 64 << 20
    assert r["resident"] - r["before"] < 64 << 20


def test_certkit_malloc_default_leaves_glibc_alone():
    r = _probe(dedicated=True, setting="default")
    assert not r["tuned"]
    assert r["held"] < 64 << 20  # glibc's default: a block this large is mapped and unmapped


def test_a_bad_certkit_malloc_value_is_a_usage_error(monkeypatch):
    from certkit.errors import UsageError
    from certkit.malloc import tune

    monkeypatch.setenv("CERTKIT_MALLOC", "fast")
    with pytest.raises(UsageError, match="CERTKIT_MALLOC='fast'"):
        tune(dedicated=True)


def test_the_cli_names_a_bad_certkit_malloc_value_in_one_line():
    env = dict(os.environ, CERTKIT_MALLOC="fast")
    r = subprocess.run([sys.executable, "-m", "certkit", "certify", "models/digits_fc.onnx",
                        "vnnlib/digits_fc_0_eps0.02.vnnlib"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CERTKIT_MALLOC='fast'" in lines[0] and "Traceback" not in r.stderr
