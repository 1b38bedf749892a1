#!/usr/bin/env bash
# The GPU check, as one script for a machine with a CUDA device: the GPU suite (gpu-marked
# tests, optionally one shard: SHARD_COUNT / SHARD_INDEX) and the CUDA benchmark.
# Uses the python on PATH if it has a CUDA torch, else makes a venv with PyPI's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  "$PY" -m venv .venv-gpu && PY=.venv-gpu/bin/python
  "$PY" -m pip install -q "torch>=2.4"
fi
"$PY" -m pip install -q -e . pytest pytest-xdist hypothesis psutil xxhash
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
shard=()
if [ -n "${SHARD_COUNT:-}" ]; then shard=(--shard-count "$SHARD_COUNT" --shard-index "${SHARD_INDEX:-0}"); fi
"$PY" -m pytest -m gpu -q -ra "${shard[@]}" serializer testing
"$PY" -m pytest -q serializer/api_test.py -k "catalog_round_trip and not another_process" -x
"$PY" -m tools.bench_cuda --gib "${BENCH_GIB:-4}"
