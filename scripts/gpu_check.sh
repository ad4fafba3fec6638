#!/usr/bin/env bash
# GPU check: build the CUDA kernels, run every test (the needs_cuda ones run
# on a GPU), run the GPU benchmarks, and print one table. Run it from the
# repository root on a machine with an NVIDIA GPU and nvcc:
#     bash scripts/gpu_check.sh            # results also go to $OUT or ./gpu_check/
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-$PWD/gpu_check}"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

echo "== GPU"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== build (SEMIMOE_CUDA=ON, archs ${SEMIMOE_CUDA_ARCHS:-90})"
export SEMIMOE_CUDA=ON SEMIMOE_CUDA_ARCHS="${SEMIMOE_CUDA_ARCHS:-90}"
"$PY" -m pip install --no-build-isolation --no-deps . 2>&1 | tee "$OUTDIR/build.log" | tail -n 12
(cd /tmp && "$PY" -m semimoe.info) | tee "$OUTDIR/info.txt"

echo "== tests"
"$PY" -m pytest tests -q -x -p no:cacheprovider --junitxml="$OUTDIR/tests.xml" 2>&1 \
  | tee "$OUTDIR/tests.log" | tail -n 25
test_rc=${PIPESTATUS[0]}

echo "== GPU benchmarks"
"$PY" -m pytest benchmarks -q -p no:cacheprovider --benchmark-only -k "cuda or gpu" \
  --benchmark-json="$OUTDIR/bench.json" 2>&1 | tee "$OUTDIR/bench.log" | tail -n 80
bench_rc=${PIPESTATUS[0]}

echo "== summary"
echo "tests exit code: $test_rc   benchmarks exit code: $bench_rc"
exit $(( test_rc != 0 || bench_rc != 0 ))
