"""Docs test: every shell command of README.md is run, or checked, by a test (issue 16).

Commands are taken from README.md when the test runs (so new ones are covered without editing this
file): lines of fenced code blocks and of indented blocks that start with ``certkit``, ``python``,
``pip``, ``dask`` or ``$ `` (then the lines after it are output), continuation lines (``\\``) joined,
``&&`` chains split, ``# comments`` dropped; and, at ``--help`` level, the commands written inline
(`` `python benchmarks/x.py --opt` ``). Each command is classified:

- **install** (``python3 -m venv``, ``. .venv/bin/activate``, ``pip install``): not run (network,
  minutes); the extras they name must exist in pyproject.toml;
- **suite** (``python -m pytest``): not run here, it is the suite this file belongs to;
- **template** (placeholders such as ``MODEL.onnx``, ``[--opt ...]`` synopses, ``HOST``): every option
  it names must be listed by ``--help`` of its sub-command (a global option by ``certkit --help``);
- **server** (``dask scheduler``/``dask worker``): never ends; ``--help`` only;
- **run**: run for real, in a copy of the repository in a temporary folder with *no* ``shared``
  folder beside it, ``/tmp/`` paths moved into the test's folder. It must exit 0, or -- when it needs
  ``../shared`` (or a file a command before it could not make without it) -- exit with a documented
  bad-input code (2 usage, 3 model, 4 spec or data) and one line on stderr naming the missing path,
  and no traceback;
- **inline**: commands written inline in the text: benchmark and training scripts take minutes, so
  only ``--help`` is run (every option named must be listed); scripts without an argument parser
  would start the work at ``--help``, and are skipped saying so; inline ``certkit`` commands are
  templates.

Known failures of the contract are listed in ``KNOWN_BUGS`` with the file that must change; an entry
that starts passing fails the test, so the list cannot go stale.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = os.path.dirname(sys.executable)

PROGRAMS = ("certkit", "python", "python3", "pip", "dask", ".")
#: A placeholder: an upper-case file name (MODEL.onnx, DATA.npz, ...), or HOST.
PLACEHOLDER = re.compile(r"(^|[\s/=:])([A-Z][A-Z0-9_]*\.(onnx|vnnlib|npz|csv|json|txt|npy)|HOST)\b")
#: Seconds a command may take (the quick ones take 2-10 s; a command needing ../shared must fail fast).
RUN_TIMEOUT = 120

#: Commands of README.md that break the contract today: a prefix of the command -> (the exit code it
#: gives instead, the file to change).
KNOWN_BUGS: dict[str, tuple[int, str]] = {}


@dataclass(frozen=True)
class Command:
    line: int  # README line number (1-based) of the command's first line
    text: str  # the command, continuation lines joined, comment dropped
    kind: str  # install | suite | template | server | run | inline
    block: int  # the code block it belongs to (commands of one block run in order); -1 inline

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.text[:60]}"


def _strip_comment(cmd: str) -> str:
    """The command without a trailing ``# comment`` (outside quotes)."""
    out, quote = [], None
    for i, ch in enumerate(cmd):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or cmd[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def _is_command(line: str) -> bool:
    s = line.strip()
    s = re.sub(r"^([A-Z_][A-Z0-9_]*=\S*\s+)+", "", s)  # VAR=value prefixes
    word = s.split(" ", 1)[0] if s else ""
    return word in PROGRAMS and bool(s[len(word):].strip()) or s in ("certkit",)


def _classify(cmd: str) -> str:
    words = cmd.split()
    if cmd.startswith(("python3 -m venv", "python -m venv", ". ", "source ")) or words[:2] == ["pip", "install"]:
        return "install"
    if re.match(r"python3? -m pytest\b", cmd):
        return "suite"
    if re.sub(r"^([A-Z_][A-Z0-9_]*=\S*\s+)+", "", cmd).startswith("dask "):
        return "server"
    if PLACEHOLDER.search(cmd) or "[--" in cmd or " ..." in cmd:
        return "template"
    return "run"


def _blocks(text: str):
    """(first line number, language, lines) of every fenced and indented code block."""
    lines = text.split("\n")
    i, n = 0, len(lines)
    while i < n:
        m = re.match(r"^(\s*)```(\w*)", lines[i])
        if m:
            lang, start, body = m.group(2), i + 2, []
            i += 1
            while i < n and not lines[i].lstrip().startswith("```"):
                body.append(lines[i])
                i += 1
            yield start, lang, body
            i += 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()) \
                and not lines[i].lstrip().startswith(("-", "*", "|")):
            start, body = i + 1, []
            while i < n and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            yield start, "indented", body
            continue
        i += 1


def readme_commands(text: str) -> list[Command]:
    out: list[Command] = []
    for b, (start, lang, body) in enumerate(_blocks(text)):
        if lang == "python":
            continue  # Python code, not shell (compiled by test_readme_python_blocks_compile)
        prompt = any(ln.lstrip().startswith("$ ") for ln in body)
        k = 0
        while k < len(body):
            ln, first = body[k].rstrip(), k
            k += 1
            if prompt:
                if not ln.lstrip().startswith("$ "):
                    continue  # output
                ln = ln.lstrip()[2:]
            elif ln[:1].isspace():
                continue  # an indented line of prose or of a tree (a command starts in column 0)
            if not _is_command(ln):
                continue
            while k < len(body):
                nxt = body[k].strip()
                if ln.endswith("\\"):  # shell continuation
                    ln = ln[:-1] + " " + nxt
                elif body[k][:1].isspace() and nxt.startswith(("[", "-")):  # a synopsis wrapped
                    ln = ln + " " + nxt
                else:
                    break
                k += 1
            cmd = " ".join(_strip_comment(ln).split())
            after_template = False
            for part in (p.strip() for p in cmd.split("&&")):
                if part:
                    kind = _classify(part)
                    if after_template and kind == "run":
                        kind = "template"  # it reads what a template before it would write
                    after_template |= kind == "template"
                    out.append(Command(start + first, part, kind, b))
    return out


def inline_commands(text: str) -> list[Command]:
    """Commands written inline in backticks: scripts of benchmarks/ and scripts/, certkit, pip."""
    out, seen = [], set()
    for no, line in enumerate(text.split("\n"), 1):
        for m in re.finditer(r"`((?:python3? (?:benchmarks|scripts)/|certkit |pip install )[^`]*)`", line):
            cmd = " ".join(m.group(1).replace("\\|", "|").split())
            if cmd in seen:
                continue
            seen.add(cmd)
            kind = "install" if cmd.startswith("pip ") else "inline"
            out.append(Command(no, cmd, kind, -1))
    return out


TEXT = README.read_text()
COMMANDS = readme_commands(TEXT)
INLINE = inline_commands(TEXT)


# --------------------------------------------------------------------------- the copy without ../shared


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The repository (working tree, without .git and caches) in a temporary folder with no ``shared``
    beside it, and a folder standing for /tmp."""
    base = tmp_path_factory.mktemp("docs")
    repo = base / "certkit-repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache",
                                                              "results", ".venv*", "*.whl"))
    (base / "tmp").mkdir()
    assert not (repo.parent / "shared").exists()
    return repo


def _env(repo: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(repo), PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("CERTKIT_DEBUG_CLUSTER", None)
    return env


def _sh(repo: Path, cmd: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = cmd.replace("/tmp/", str(repo.parent / "tmp") + "/")
    return subprocess.run(["bash", "-c", cmd], cwd=repo, env=_env(repo), capture_output=True, text=True,
                          timeout=timeout)


def test_certkit_runs_from_the_copy(copy):
    """The commands below run the copy's code, not the installed tree's."""
    p = _sh(copy, 'python -c "import certkit; print(certkit.__file__)"')
    assert p.returncode == 0 and p.stdout.strip().startswith(str(copy)), p
    p = _sh(copy, 'certkit --version')
    assert p.returncode == 0 and p.stdout.startswith("certkit "), p


# --------------------------------------------------------------------------- extraction sanity


def test_commands_were_found():
    kinds = {c.kind for c in COMMANDS}
    assert {"install", "template", "run"} <= kinds, kinds
    assert any(c.text.startswith("certkit certify models/") for c in COMMANDS)
    assert any("../shared" in c.text and c.kind == "run" for c in COMMANDS)


def test_readme_python_blocks_compile():
    for start, lang, body in _blocks(TEXT):
        if lang == "python":
            compile("\n".join(body), f"README.md:{start}", "exec")


# --------------------------------------------------------------------------- option checks


_HELP: dict[tuple[str, ...], str] = {}


def _help(repo: Path, path: tuple[str, ...]) -> str:
    if path not in _HELP:
        p = _sh(repo, " ".join(["certkit", *path, "--help"]), timeout=60)
        assert p.returncode == 0, (path, p.stderr)
        _HELP[path] = p.stdout
    return _HELP[path]


def _options(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if re.match(r"^--[a-z]", t)]


def _unlisted(options: list[str], help_text: str) -> list[str]:
    """The options a --help output does not list (``--eps`` is not found in ``--eps-sweep``)."""
    return [o for o in options if not re.search(re.escape(o) + r"(?![\w-])", help_text)]


def _check_certkit_options(repo: Path, cmd: str) -> None:
    """Every option of a certkit command is listed by --help of the parser that must take it: before
    the sub-command, the global parser; after it, the sub-command's."""
    tokens = re.sub(r"[\[\]|]", " ", cmd).split()
    assert tokens[0] == "certkit"
    i = 1
    glob = []
    while i < len(tokens) and tokens[i].startswith("-"):
        glob.append(tokens[i])
        i += 1
        if i < len(tokens) and not tokens[i].startswith("-") and tokens[i].isupper():
            i += 1  # the option's value (N)
    top = _help(repo, ())
    sub: list[str] = []
    while i < len(tokens) and re.fullmatch(r"[a-z]+", tokens[i]) and \
            re.search(r"\{[a-z,]*\b%s\b[a-z,]*\}" % tokens[i], _help(repo, tuple(sub))):
        sub.append(tokens[i])
        i += 1
    missing = _unlisted(_options(glob), top)
    assert not missing, f"{cmd!r}: {missing} are not options of 'certkit' (before the sub-command)"
    if sub:
        h = _help(repo, tuple(sub))
        missing = _unlisted(_options(tokens[i:]), h)
        assert not missing, f"{cmd!r}: {missing} are not listed by 'certkit {' '.join(sub)} --help'"


# --------------------------------------------------------------------------- the code blocks' commands


def _violation(repo: Path, p: subprocess.CompletedProcess) -> str | None:
    """Why a run breaks the contract (exit 0; or a documented bad-input code -- 2 usage, 3 model, 4 spec or
    data: a missing model file is a model error -- with one stderr line naming a missing path and no
    traceback), or None."""
    if "Traceback" in p.stderr:
        return f"a traceback (exit {p.returncode}):\n{p.stderr}"
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    if p.returncode not in (2, 3, 4):
        return f"exit {p.returncode} (want 0, or 2/3/4 for a missing ../shared file): {p.stderr.strip()}"
    if len(lines) != 1:
        return (f"exit {p.returncode} with {len(lines)} lines on stderr (want one naming the missing path); "
                f"stdout: {p.stdout.strip()}")
    tokens = [t.strip("'\"():,") for t in lines[0].split()]
    named = [t for t in tokens if "/" in t or t.endswith((".npz", ".onnx", ".npy", ".csv", ".vnnlib", ".json"))]
    if not [t for t in named if not (Path(t) if Path(t).is_absolute() else repo / t).exists()]:
        return f"exit {p.returncode}, but the line names no missing path: {lines[0]}"
    return None


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command(copy, cmd: Command):
    if cmd.kind == "install":
        extras = re.findall(r'\.\[([a-z,]+)\]', cmd.text)
        if extras:
            import tomllib  # Python >= 3.11; the extras pyproject.toml declares

            declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            unknown = [e for group in extras for e in group.split(",") if e not in declared]
            assert not unknown, f"{cmd.text!r}: extras {unknown} are not in pyproject.toml"
        pytest.skip(f"install command (network, minutes): not run; its extras exist in pyproject.toml: {cmd.text}")
    if cmd.kind == "suite":
        pytest.skip(f"the test suite itself: not run from a test: {cmd.text}")
    if cmd.kind == "server":
        if shutil.which("dask", path=BIN + os.pathsep + os.environ.get("PATH", "")) is None:
            pytest.skip(f"a Dask server (never ends) and dask is not installed: {cmd.text}")
        words = re.sub(r"^([A-Z_][A-Z0-9_]*=\S*\s+)+", "", cmd.text).split()
        p = _sh(copy, " ".join(words[:2] + ["--help"]), timeout=60)
        assert p.returncode == 0, p.stderr
        missing = _unlisted(_options(words[2:]), p.stdout)
        assert not missing, f"{cmd.text!r}: {missing} not listed by '{' '.join(words[:2])} --help'"
        pytest.skip(f"a Dask server (never ends): only '{' '.join(words[:2])} --help' and its options checked")
    if cmd.kind == "template":
        if cmd.text.startswith("certkit"):
            _check_certkit_options(copy, cmd.text)
            return
        pytest.skip(f"a template with placeholders, not a certkit command: {cmd.text}")
    _run_for_real(copy, cmd)


def _run_for_real(repo: Path, cmd: Command) -> None:
    p = _sh(repo, cmd.text)
    why = _violation(repo, p)
    known = next((v for k, v in KNOWN_BUGS.items() if cmd.text.startswith(k)), None)
    if known is None:
        assert why is None, f"{cmd.text!r} in a copy without ../shared: {why}"
    elif why is None:
        pytest.fail(f"fixed: remove {cmd.text!r} from KNOWN_BUGS")
    elif p.returncode == known[0] and "Traceback" not in p.stderr:
        pytest.xfail(f"known bug, {known[1]}: {why}")
    else:
        pytest.fail(f"{cmd.text!r} (a known bug, but not as recorded): {why}")


# --------------------------------------------------------------------------- inline commands


def _script(cmd: str) -> str | None:
    m = re.match(r"python3? ((?:benchmarks|scripts)/\S+\.py)", cmd)
    return m.group(1) if m else None


@pytest.mark.parametrize("cmd", INLINE, ids=[c.id for c in INLINE])
def test_readme_inline_command(copy, cmd: Command):
    if cmd.kind == "install":
        pytest.skip(f"install command (network, minutes): not run: {cmd.text}")
    if cmd.text.startswith("certkit"):
        if cmd.text in ("certkit --version", "certkit --help"):
            p = _sh(copy, cmd.text, timeout=60)
            assert p.returncode == 0 and p.stdout, p.stderr
            return
        _check_certkit_options(copy, cmd.text)
        return
    script = _script(cmd.text)
    assert script, cmd.text
    assert (copy / script).is_file(), f"{script} does not exist"
    if "ArgumentParser" not in (copy / script).read_text():
        pytest.skip(f"{script}: a benchmark/training script (minutes) without an argument parser: "
                    "'--help' would start it, so it is not run")
    p = _sh(copy, f"python {script} --help", timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, f"{script} --help without ../shared:\n{p.stderr}"
    tokens = re.sub(r"[\[\]|]", " ", cmd.text).split()
    missing = _unlisted(_options(tokens), p.stdout)
    assert not missing, f"{cmd.text!r}: {missing} not listed by '{script} --help'"
