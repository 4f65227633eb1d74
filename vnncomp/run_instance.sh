#!/usr/bin/env bash
# VNN-COMP tool interface: run certkit on one instance.
#
#   run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
#
# Runs `certkit certify ONNX VNNLIB --out RESULTS_FILE --timeout TIMEOUT` and always
# leaves RESULTS_FILE with sat (then the counterexample), unsat, unknown, timeout
# or error on its first line. A run still going 10 s past TIMEOUT is killed and
# reported as timeout. The backend is CERTKIT_BACKEND (default auto). `.gz` files
# are read directly; a missing FILE whose FILE.gz exists is read from FILE.gz.
# Python: CERTKIT_PYTHON, else the venv of install_tool.sh (CERTKIT_VENV,
# default <repo>/.venv), else python3. Exits with certkit's exit code (0: a verdict).
set -uo pipefail  # no -e: the results file must be written whatever certkit does

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

usage() { echo "run_instance.sh: error: $*" >&2; }

if [ "$#" -ne 6 ]; then
    usage "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT"
    # leave an error verdict if a results file was named at all
    [ "$#" -ge 5 ] && [ -n "$5" ] && echo error > "$5"
    exit 2
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"; RESULTS="$5"; TIMEOUT="$6"

fail() {  # message, exit code: an error verdict in the results file
    usage "$1"
    echo error > "$RESULTS" || usage "cannot write the results file $RESULTS"
    exit "$2"
}

[ "$VERSION" = "v1" ] || fail "unsupported interface version '$VERSION' (expected v1)" 2
[[ "$TIMEOUT" =~ ^[0-9]*\.?[0-9]+$ ]] || fail "TIMEOUT must be a number of seconds, got '$TIMEOUT'" 2
rm -f "$RESULTS"

if [ -n "${CERTKIT_PYTHON:-}" ]; then PY="$CERTKIT_PYTHON"
elif [ -x "${CERTKIT_VENV:-$REPO/.venv}/bin/python" ]; then PY="${CERTKIT_VENV:-$REPO/.venv}/bin/python"
else PY=python3; fi

[ -e "$ONNX" ] || [ ! -e "$ONNX.gz" ] || ONNX="$ONNX.gz"
[ -e "$VNNLIB" ] || [ ! -e "$VNNLIB.gz" ] || VNNLIB="$VNNLIB.gz"

echo "Running certkit (${CERTKIT_BACKEND:-auto}) on benchmark '$CATEGORY': $ONNX, $VNNLIB, timeout $TIMEOUT s"
CMD=("$PY" -m certkit.cli certify "$ONNX" "$VNNLIB" --backend "${CERTKIT_BACKEND:-auto}" \
     --timeout "$TIMEOUT" --out "$RESULTS")
GUARD=$(awk -v t="$TIMEOUT" 'BEGIN { printf "%.3f", t + 10 }')
START=$(date +%s.%N)
if command -v timeout >/dev/null 2>&1; then
    timeout --kill-after=5 "$GUARD" "${CMD[@]}"
else
    "${CMD[@]}"
fi
RC=$?
LATE=$(awk -v s="$START" -v e="$(date +%s.%N)" -v g="$GUARD" 'BEGIN { print (e - s >= g) ? 1 : 0 }')

if { [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; } && [ "$LATE" -eq 1 ]; then  # killed by the guard
    echo "run_instance.sh: still running 10 s past the timeout: killed" >&2
    echo timeout > "$RESULTS"
    RC=0  # a verdict, as certkit's own timeouts
elif [ ! -s "$RESULTS" ]; then  # certkit failed before writing it (exit code 3, 4, 5, 70...)
    echo error > "$RESULTS"
fi
FIRST="$(head -n 1 "$RESULTS" 2>/dev/null || true)"
case "$FIRST" in
    sat|unsat|unknown|timeout|error) ;;
    *) echo "run_instance.sh: unexpected results file (first line '$FIRST'): writing error" >&2
       echo error > "$RESULTS"; [ "$RC" -ne 0 ] || RC=70 ;;
esac
echo "result: $(head -n 1 "$RESULTS")"
exit "$RC"
