#!/usr/bin/env bash
# make-onnx2tf-env.sh [VENV_DIR] -- the isolated Python environment the converter uses to turn an
# ONNX-only model into TFLite (onnx2tf + tensorflow-cpu). TensorFlow never enters edgebench's own
# environment: the converter runs `$EDGEBENCH_ONNX2TF_PYTHON -m onnx2tf ...` in a subprocess.
#
#   deploy/make-onnx2tf-env.sh                      # -> /opt/edgebench-onnx2tf
#   deploy/make-onnx2tf-env.sh ~/.cache/onnx2tf-env  # anywhere you like
#   export EDGEBENCH_ONNX2TF_PYTHON=/opt/edgebench-onnx2tf/bin/python   # printed at the end
#
# Idempotent: re-running checks the venv, installs only what is missing and re-runs the smoke check.
# Needs python3.11 (or PYTHON=...) with the venv module, and PyPI. Takes ~2-3 min and ~1.7 GB the first time.
#
# Why --no-deps: onnx2tf pins old exact versions (tensorflow 2.19, numpy 1.26, onnx 1.19, onnxruntime
# 1.23, ...) and tf-keras would pull the full `tensorflow` (GPU) package next to tensorflow-cpu. Both are
# installed without their dependencies on top of current tensorflow-cpu, then the few modules onnx2tf
# really imports at run time are added. Measured to work: tensorflow-cpu 2.21.0 + onnx2tf 1.29.24 (the
# newest onnx2tf for Python 3.11; 2.x needs Python 3.12). Never install torch here.
set -euo pipefail

VENV="${1:-${EDGEBENCH_ONNX2TF_VENV:-/opt/edgebench-onnx2tf}}"
PYTHON="${PYTHON:-python3.11}"
TF_VERSION="${TF_VERSION:-2.21.0}"
ONNX2TF_VERSION="${ONNX2TF_VERSION:-1.29.24}"

case "${1:-}" in
-h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' ||
    { echo "make-onnx2tf-env: $PYTHON is older than 3.10" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --no-input -q)

# 1. TensorFlow (CPU only) with its own dependencies (numpy, protobuf, ml-dtypes, h5py, flatbuffers, ...)
"${PIP[@]}" "tensorflow-cpu==${TF_VERSION}"
# 2. onnx2tf and tf-keras (imported at module level by onnx2tf) without their pins
"${PIP[@]}" --no-deps "onnx2tf==${ONNX2TF_VERSION}" "tf-keras~=${TF_VERSION%.*}.0"
# 3. what onnx2tf imports at run time, and onnxsim (run as a command; the converter puts this venv's bin/
#    on its PATH). pip then lists onnx2tf's unmet exact pins as "dependency conflicts": expected, harmless.
out=$("${PIP[@]}" onnx onnxruntime onnx-graphsurgeon sng4onnx sne4onnx psutil requests ai-edge-litert \
    "onnxsim==0.4.36" 2>&1) || { echo "$out" >&2; exit 1; }
echo "$out" | grep -v -e "^onnx2tf .* requires" -e "dependency conflicts" -e "^\s*$" || true

# smoke check: the modules import and the commands answer
export TF_CPP_MIN_LOG_LEVEL=3
"$PY" - 2>/dev/null <<'EOF'
import importlib
import onnx2tf  # noqa: F401  (imports tensorflow, tf_keras, onnx_graphsurgeon, ai_edge_litert, ...)
import tensorflow as tf

for mod in ("onnx", "onnxruntime", "sng4onnx", "sne4onnx", "psutil"):
    importlib.import_module(mod)
print(f"ok: tensorflow {tf.__version__}, onnx2tf {importlib.metadata.version('onnx2tf')}")
EOF
"$PY" -m onnx2tf -h >/dev/null 2>&1 || { echo "make-onnx2tf-env: onnx2tf -h failed" >&2; exit 1; }
"$VENV/bin/onnxsim" -h >/dev/null

echo
echo "export EDGEBENCH_ONNX2TF_PYTHON=$PY"
