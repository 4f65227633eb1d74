#!/usr/bin/env bash
# VNN-COMP tool interface: install certkit.
#
#   install_tool.sh v1
#
# Creates a virtual environment (CERTKIT_VENV, default: <repo>/.venv) with the
# Python in PYTHON (default python3, needs >= 3.10), installs the CPU build of
# torch first, then certkit with its HiGHS extra (pip install -e <repo>[highs]).
# Works from any current directory.
set -euo pipefail

TOOL=certkit
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${CERTKIT_VENV:-$REPO/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
TORCH_SPEC="${CERTKIT_TORCH:-torch==2.13.0}"

die() { echo "install_tool.sh: error: $*" >&2; exit 1; }

[ "$#" -eq 1 ] || die "usage: install_tool.sh v1"
[ "$1" = "v1" ] || die "unsupported interface version '$1' (expected v1)"

command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "'$PYTHON_BIN' not found (set PYTHON to a Python >= 3.10)"
"$PYTHON_BIN" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$PYTHON_BIN is Python $("$PYTHON_BIN" -c 'import platform; print(platform.python_version())'); certkit needs >= 3.10"

echo "Installing $TOOL from $REPO into the virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -m venv "$VENV" || die "cannot create the virtual environment $VENV (is python3-venv installed?)"
fi
PIP=("$VENV/bin/python" -m pip)
# the CPU build of torch first: a plain 'torch' requirement could pull a CUDA build
echo "pip install $TORCH_SPEC"
"${PIP[@]}" install -q "$TORCH_SPEC" || die "pip install $TORCH_SPEC failed"
echo "pip install -e $REPO[highs]"
"${PIP[@]}" install -q -e "$REPO[highs]" || die "pip install -e $REPO[highs] failed"

VERSION="$("$VENV/bin/python" -m certkit.cli --version)" || die "certkit does not run after installing"
echo "$VERSION installed; prepare_instance.sh and run_instance.sh use $VENV/bin/python"
