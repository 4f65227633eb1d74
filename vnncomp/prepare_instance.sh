#!/usr/bin/env bash
# VNN-COMP tool interface: check that certkit accepts an instance.
#
#   prepare_instance.sh v1 CATEGORY ONNX VNNLIB
#
# Exits 0 when certkit reads the model (ONNX checker, every operator supported)
# and parses the VNN-LIB spec against it, non-zero otherwise. `.gz` files are
# read directly; a missing FILE whose FILE.gz exists is read from FILE.gz.
# Python: CERTKIT_PYTHON, else the venv of install_tool.sh (CERTKIT_VENV,
# default <repo>/.venv), else python3.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

die() { echo "prepare_instance.sh: error: $*" >&2; exit 1; }

[ "$#" -eq 4 ] || die "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB"
[ "$1" = "v1" ] || die "unsupported interface version '$1' (expected v1)"
CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"

if [ -n "${CERTKIT_PYTHON:-}" ]; then PY="$CERTKIT_PYTHON"
elif [ -x "${CERTKIT_VENV:-$REPO/.venv}/bin/python" ]; then PY="${CERTKIT_VENV:-$REPO/.venv}/bin/python"
else PY=python3; fi

# a FILE that is missing but whose FILE.gz exists: certkit reads gzip directly
[ -e "$ONNX" ] || [ ! -e "$ONNX.gz" ] || ONNX="$ONNX.gz"
[ -e "$VNNLIB" ] || [ ! -e "$VNNLIB.gz" ] || VNNLIB="$VNNLIB.gz"
[ -f "$ONNX" ] || die "no such ONNX file: $ONNX"
[ -f "$VNNLIB" ] || die "no such VNN-LIB file: $VNNLIB"

echo "Preparing certkit for benchmark '$CATEGORY': $ONNX, $VNNLIB"
"$PY" - "$ONNX" "$VNNLIB" <<'PYEOF' || die "certkit does not accept this instance (see the message above)"
import sys

try:
    import certkit
except Exception as e:  # the tool itself is not installed
    print(f"certkit is not importable by {sys.executable}: {e}", file=sys.stderr)
    sys.exit(1)
try:
    model = certkit.load_model(sys.argv[1])
    spec = certkit.load_spec(sys.argv[2], model)
except certkit.CertkitError as e:
    print(f"certkit: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    sys.exit(e.exit_code or 1)
except Exception as e:  # a bug
    print(f"certkit: internal error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(70)
print(f"ok: {model.n_inputs} inputs, {model.n_outputs} outputs, {len(spec.properties)} input region(s)")
PYEOF
