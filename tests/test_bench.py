"""``certkit bench``: instances CSV in, per-instance rows, summary and VNN-COMP score out.

Runs the CLI in-process (each instance still gets its own worker process) on a
temporary CSV built from the shipped examples.
"""
from __future__ import annotations

import csv
import gzip
import os
import shutil
import time
from pathlib import Path

import pytest

from certkit import bench
from certkit.cli import main
from certkit.verify.certify import STAGES

from tests.helpers.examples import FC, SAT, UNSAT

HEAD = ["benchmark", "onnx", "vnnlib", "timeout_s", "expected", "note"]


def rel(p: Path, base: Path) -> str:
    return os.path.relpath(p, base)


def write_csv(path: Path, rows: list[list], header: list[str] | None = HEAD) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def run(capsys, *args) -> tuple[int, list[str], list[str]]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out.splitlines(), cap.err.splitlines()


def read_out(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def summary_row(out: list[str], name: str) -> dict:
    head = next(line.split() for line in out if line.startswith("benchmark "))
    line = next(line.split() for line in out if line.split() and line.split()[0] == name)
    return dict(zip(head, line))


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """unsat, sat and a missing-model row, relative paths, an extra column."""
    return write_csv(tmp_path / "instances.csv", [
        ["digits", rel(FC, tmp_path), rel(UNSAT, tmp_path), 60, "unsat", "a"],
        ["digits", rel(FC, tmp_path), rel(SAT, tmp_path), 60, "sat", "b"],
        ["broken", "no_such_model.onnx", rel(UNSAT, tmp_path), 60, "unsat", "c"],
    ])


def test_bench_mixed_jobs2(mixed: Path, tmp_path: Path, capsys):
    out = tmp_path / "results.csv"
    rc, stdout, err = run(capsys, "bench", mixed, "--out", out, "--jobs", 2)
    assert rc == 0, err
    fields, rows = read_out(out)
    assert fields == list(bench.COLUMNS) + ["note"]
    by_note = {r["note"]: r for r in rows}
    assert set(by_note) == {"a", "b", "c"}
    a, b, c = by_note["a"], by_note["b"], by_note["c"]
    assert (a["verdict"], a["expected"], a["wrong"], a["benchmark"]) == ("unsat", "unsat", "0", "digits")
    assert a["stage"] in STAGES["auto"] and float(a["timeout"]) == 60  # the stage that proved it
    assert (b["verdict"], b["wrong"]) == ("sat", "0") and b["stage"]
    assert c["verdict"] == "error" and "no_such_model.onnx" in c["message"] and c["wrong"] == "0"
    assert a["onnx"] == rel(FC, tmp_path)  # paths written as in the input CSV
    progress = [line for line in stdout if line.startswith("[")]
    assert len(progress) == 3 and progress[-1].startswith("[3/3]")
    s = summary_row(stdout, "all")
    assert (s["instances"], s["solved"], s["unsat"], s["sat"], s["unknown"], s["timeout"], s["error"],
            s["wrong"], s["score"], s["max"]) == ("3", "2", "1", "1", "0", "0", "1", "0", "20", "30")
    assert summary_row(stdout, "digits")["score"] == "20"
    assert summary_row(stdout, "broken")["error"] == "1"
    assert any("time bonuses are not included" in line for line in stdout)


def test_wrong_expected_counts(tmp_path: Path, capsys):
    csv_path = write_csv(tmp_path / "i.csv", [
        ["digits", str(FC), str(SAT), 60, "unsat", "mislabelled"],
        ["digits", str(FC), str(UNSAT), 60, "unknown", "no label"],
    ])
    out = tmp_path / "r.csv"
    rc, stdout, _ = run(capsys, "bench", csv_path, "--out", out, "--backend", "deeppoly")
    assert rc == 0
    rows = {r["note"]: r for r in read_out(out)[1]}
    assert rows["mislabelled"]["verdict"] == "sat" and rows["mislabelled"]["wrong"] == "1"
    assert rows["no label"]["verdict"] == "unsat" and rows["no label"]["wrong"] == "0"
    assert any("WRONG" in line for line in stdout)
    s = summary_row(stdout, "all")
    assert (s["wrong"], s["score"], s["max"], s["solved"]) == ("1", "-150", "10", "2")


def test_headerless_vnncomp_csv_with_gz(tmp_path: Path, capsys):
    bdir = tmp_path / "mybench"
    (bdir / "onnx").mkdir(parents=True)
    (bdir / "vnnlib").mkdir()
    shutil.copy(FC, bdir / "onnx" / "net.onnx")
    (bdir / "vnnlib" / "sat.vnnlib.gz").write_bytes(gzip.compress(SAT.read_bytes()))
    (bdir / "vnnlib" / "unsat.vnnlib.gz").write_bytes(gzip.compress(UNSAT.read_bytes()))
    # the second row names a file that exists only as .gz, as VNN-COMP benchmark repositories ship them
    csv_path = write_csv(bdir / "instances.csv", [["onnx/net.onnx", "vnnlib/sat.vnnlib.gz", 30],
                                                   ["onnx/net.onnx", "vnnlib/unsat.vnnlib", 30]], header=None)
    out = tmp_path / "r.csv"
    rc, stdout, _ = run(capsys, "bench", csv_path, "--out", out, "--timeout-scale", 0.5)
    assert rc == 0
    fields, rows = read_out(out)
    assert fields == list(bench.COLUMNS)
    assert [r["verdict"] for r in rows] == ["sat", "unsat"]
    assert all(r["benchmark"] == "mybench" and r["expected"] == "" and float(r["timeout"]) == 15 for r in rows)
    s = summary_row(stdout, "all")
    assert (s["solved"], s["score"], s["max"]) == ("2", "0", "0")  # no expected verdicts: nothing scored


def test_filter_limit_and_worker_error(tmp_path: Path, capsys):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 ")
    csv_path = write_csv(tmp_path / "i.csv", [
        ["digits", str(FC), str(bad), 60, "unsat", "bad spec"],
        ["digits", str(FC), str(SAT), 60, "sat", "skipped by limit"],
        ["other", str(FC), str(SAT), 60, "sat", "skipped by filter"],
    ])
    out = tmp_path / "r.csv"
    rc, stdout, _ = run(capsys, "bench", csv_path, "--out", out, "--filter", "digits", "--limit", 1)
    assert rc == 0
    rows = read_out(out)[1]
    assert len(rows) == 1 and rows[0]["verdict"] == "error"
    assert rows[0]["message"].startswith("SpecError: ") and "\n" not in rows[0]["message"]
    assert summary_row(stdout, "all")["error"] == "1"


def test_expected_and_timeout_cap(mixed: Path, tmp_path: Path, capsys):
    """--expected sat keeps the sat row only; --timeout-cap caps its 60 s timeout (after the scale)."""
    out = tmp_path / "r.csv"
    rc, stdout, _ = run(capsys, "bench", mixed, "--out", out, "--expected", "sat", "--timeout-scale", "2",
                        "--timeout-cap", "7.5")
    assert rc == 0
    rows = read_out(out)[1]
    assert len(rows) == 1 and rows[0]["vnnlib"].endswith(os.path.basename(SAT)) and rows[0]["verdict"] == "sat"
    assert float(rows[0]["timeout"]) == 7.5
    rc, stdout, _ = run(capsys, "bench", mixed, "--expected", "sat", "--filter", "broken")
    assert rc == 0 and any("no instance matches --filter 'broken' --expected sat" in line for line in stdout)


def test_hard_guard_kills_a_stuck_worker(tmp_path: Path, capsys, monkeypatch):
    fifo = tmp_path / "stuck.vnnlib"
    os.mkfifo(fifo)  # opening it for reading blocks forever: the worker never answers
    monkeypatch.setattr(bench, "GRACE", 0.5)
    csv_path = write_csv(tmp_path / "i.csv", [["digits", str(FC), str(fifo), 1, "unsat", "stuck"]])
    out = tmp_path / "r.csv"
    rc, stdout, _ = run(capsys, "bench", csv_path, "--out", out)
    assert rc == 0
    row = read_out(out)[1][0]
    assert row["verdict"] == "timeout" and "killed" in row["message"]
    assert 1.0 <= float(row["time_s"]) < 10
    assert summary_row(stdout, "all")["timeout"] == "1"


def test_late_answer_counts_as_timeout():
    inst = bench.Instance(1, "b", "m.onnx", "s.vnnlib", "m.onnx", "s.vnnlib", 10.0, "unsat")
    row = bench._row(inst, 10.0, "unsat", "deeppoly", 12.0, "")
    assert row["verdict"] == "timeout" and "after the timeout" in row["message"] and row["wrong"] == "0"
    assert bench._row(inst, 10.0, "sat", "attack", 3.0, "")["wrong"] == "1"


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read"),
    ("onnx,vnnlib,expected\na.onnx,b.vnnlib,unsat\n", "missing column(s) timeout"),
    ("a.onnx,b.vnnlib\n", "need at least 3"),
    ("a.onnx,b.vnnlib,soon\n", "bad timeout"),
    ("", "no instances"),
])
def test_bad_csv_exit_4(tmp_path: Path, capsys, content, needle):
    path = tmp_path / "i.csv"
    if content is not None:
        path.write_text(content)
    rc, _, err = run(capsys, "bench", path)
    assert rc == 4
    assert len(err) == 1 and err[0].startswith("certkit: error: ") and needle in err[0], err


@pytest.mark.parametrize("args", [["--backend", "nope"], ["--jobs", "0"], ["--timeout-scale", "0"],
                                  ["--limit", "-1"], ["--jobs", "x"], ["--timeout-cap", "0"],
                                  ["--timeout-cap", "nan"], ["--expected", "maybe"]])
def test_usage_errors_exit_2(mixed: Path, capsys, args):
    rc, _, err = run(capsys, "bench", mixed, *args)
    assert rc == 2 and len(err) == 1 and err[0].startswith("certkit: error: "), err


def test_backends_come_from_stages(mixed: Path, capsys):
    rc, _, err = run(capsys, "bench", mixed, "--backend", "nope")
    assert rc == 2 and all(name in err[0] for name in STAGES)


def test_worker_dying_without_a_result_is_an_error_row():
    ctx = bench._context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=os._exit, args=(3,))  # exits at once, sends nothing
    proc.start()
    send.close()
    inst = bench.Instance(1, "b", "m.onnx", "s.vnnlib", "m.onnx", "s.vnnlib", 30.0, "unsat")
    r = bench._Running(inst, proc, recv, time.monotonic(), 30.0)
    proc.join(30)
    row = bench._poll(r)
    assert row is not None and row["verdict"] == "error" and "exit code 3" in row["message"]


def test_sigterm_leaves_no_worker_behind(tmp_path: Path):
    """``kill`` (SIGTERM) on a running ``certkit bench`` ends it as Ctrl-C does: its worker (stuck
    reading a FIFO here) and the fork server are gone after it, the rows finished so far are kept."""
    import signal
    import subprocess
    import sys
    import time as _time

    fifo = tmp_path / "stuck.vnnlib"
    os.mkfifo(fifo)
    csv_path = write_csv(tmp_path / "i.csv", [["digits", str(FC), str(UNSAT), 60, "unsat", "done"],
                                              ["digits", str(FC), str(fifo), 60, "unsat", "stuck"]])
    out = tmp_path / "r.csv"
    proc = subprocess.Popen([sys.executable, "-m", "certkit", "bench", str(csv_path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))

    deadline = _time.monotonic() + 60
    while _time.monotonic() < deadline:  # the first row written: the stuck worker is running
        if out.exists() and len(read_out(out)[1]) == 1 and len(_descendants(proc.pid)) >= 2:
            break
        _time.sleep(0.2)
    workers = _descendants(proc.pid)
    assert len(workers) >= 2, "the worker never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    _time.sleep(0.5)
    alive = [p for p in workers if _running(p)]
    assert not alive, alive
    assert len(read_out(out)[1]) == 1


def test_run_puts_the_sigterm_handler_back(mixed: Path):
    """bench.run installs its SIGTERM handler for the run only (a library caller's handler is kept)."""
    import signal

    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        bench.run(bench.read_instances(str(mixed))[0][:1])
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_summary_prints_abcrown_reference_beside():
    """With the instances' ``abcrown_time_s``, the summary counts alpha-beta-CROWN's published
    solves within each row's timeout as run (a time above it, or none, is not solved)."""
    rows = [{"benchmark": "b", "expected": "unsat", "verdict": "unsat", "wrong": "0", "time_s": "1.0",
             "timeout": "30", "abcrown_time_s": t} for t in ("12.5", "40", "")]
    out = bench.summary(rows)
    s = summary_row(out, "b")
    assert (s["solved"], s["abcrown_solved"], s["abcrown_s"]) == ("3", "1", "12.5")
    assert any("alpha-beta-CROWN's published results" in line for line in out)
    plain = bench.summary([{k: v for k, v in r.items() if k != "abcrown_time_s"} for r in rows])
    assert "abcrown_solved" not in plain[0]


def test_interrupt_inside_worker_start_kills_it(tmp_path: Path, monkeypatch):
    """An interrupt (SIGTERM is one) that lands inside a worker's start(), after the fork, still kills
    that worker: it is listed before it starts (it was not, and the interpreter's exit then waited for
    it forever -- seen once in CI as a bench that did not end after SIGTERM)."""
    import multiprocessing.process

    started = []
    real = multiprocessing.process.BaseProcess.start

    def start(self):
        real(self)
        started.append(self)
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    fifo = tmp_path / "stuck.vnnlib"
    os.mkfifo(fifo)  # the worker would block reading it
    inst = bench.Instance(1, "digits", str(FC), str(fifo), str(FC), str(fifo), 60.0, "unsat")
    with pytest.raises(KeyboardInterrupt):
        bench.run([inst])
    assert started and not started[0].is_alive()


def _descendants(pid: int) -> set[int]:
    """Pids of the live descendants of ``pid`` (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    found, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            found.add(k)
            todo.append(k)
    return found


def _running(pid: int) -> bool:
    try:
        return "Z" not in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc to find the instance process")
def test_instance_ends_with_the_process_that_started_it(tmp_path: Path):
    """A process running ``run_instance`` (a Dask worker's task) killed outright (SIGKILL): its instance
    process ends too, within seconds. It did not: a forkserver child holds the fork server's alive pipe,
    so the server outlived the killed worker, PDEATHSIG never fired, and the instance ran on to its
    timeout (racing the task's retry for its input)."""
    import signal
    import subprocess
    import sys

    fifo = tmp_path / "stuck.vnnlib"
    os.mkfifo(fifo)  # the instance blocks opening it for reading
    code = ("from certkit import bench; import sys; "
            f"bench.run_instance(bench.Instance(1, 'digits', {str(FC)!r}, {str(fifo)!r}, {str(FC)!r}, {str(fifo)!r}, "
            "60.0, 'unsat'), 60.0)")
    owner = subprocess.Popen([sys.executable, "-c", code], cwd=str(tmp_path))
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(started) < 2:  # the fork server and the instance
            started = _descendants(owner.pid)
            time.sleep(0.2)
        assert len(started) >= 2, "the instance never started"
        time.sleep(1.0)  # the instance is past its start, blocked opening the FIFO
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_running(p) for p in started):
            time.sleep(0.1)
        assert not [p for p in started if _running(p)], "the instance outlived the process that started it"
    finally:
        owner.kill()
        for pid in started:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
