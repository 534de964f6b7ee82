#!/usr/bin/env bash
# The GPU checks in one run (about 10 minutes on one H100/H200): the CUDA tests, then the
# throughput benchmarks on CPU and CUDA, their JSON lines in $OUT (or benchmarks/out).
#   bash benchmarks/gpu_check.sh [path to a dongmo-qcq/FG-CAM checkout]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
MPLBACKEND=agg $PY -m pytest -q -p no:cacheprovider tests/test_scale.py tests/test_distributed.py 2>&1 | tee "$OUT/tests.txt"
J="$OUT/scale.jsonl"
$PY benchmarks/bench_scale.py insdel --device cuda --model bundled --images 64 --metric-batch 256 --json "$J"
$PY benchmarks/bench_scale.py insdel --device cuda --model vgg16_bn --images 16 --metric-batch 128 --json "$J"
if [ -n "${1:-}" ]; then
  $PY benchmarks/bench_scale.py authors --device cuda --authors-repo "$1" --batch 32 --json "$J"
  $PY benchmarks/bench_scale.py authors --device cuda --authors-repo "$1" --batch 1 --repeats 10 --json "$J"
fi
$PY benchmarks/bench_scale.py precision --device cuda --n 64 --json "$J"
$PY benchmarks/bench_scale.py project --device cuda --batch 32 --metric-batch 128 --json "$J"
$PY benchmarks/bench_explain.py --device cuda --batches 1,16 --repeats 5 2>&1 | tee "$OUT/explain.txt"
