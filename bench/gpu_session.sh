#!/usr/bin/env bash
# One session on the GPU machine (see BENCHMARKS.md): install, benchmark, GPU tests, simulator on CUDA.
# Every result goes to $OUT; each step is bounded so that one failure never costs the others.
#   bash bench/gpu_session.sh COMMIT      (COMMIT: the commit being measured, recorded in the JSON)
set -u
OUT=${OUT:-bench/results/session}
mkdir -p "$OUT"
export HWLAB_COMMIT=${1:-unknown}
start=$(date +%s)
step() { echo "== $1 at $(( $(date +%s) - start ))s" | tee -a "$OUT/session.log"; }

step install
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$OUT/session.log" 2>&1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/hwlab . \
    >>"$OUT/session.log" 2>&1
export PYTHONPATH=/tmp/hwlab:/tmp/site:bench
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv >"$OUT/nvidia-smi.csv" 2>&1

step kernels-benchmark
timeout "${BENCH_S:-300}" python3 bench/gpu_kernels.py --out "$OUT" --compile-workers 12 >"$OUT/gpu_kernels.log" 2>&1
tail -n 3 "$OUT/gpu_kernels.log"

step gpu-tests
timeout "${TESTS_S:-150}" python3 -m pytest -m gpu -q -p no:cacheprovider --rootdir . -o addopts="--strict-markers -ra" \
    tests/test_gpu_kernels.py tests/test_gpu.py tests/test_gpu_sim.py >"$OUT/gpu_tests.log" 2>&1
tail -n 3 "$OUT/gpu_tests.log"

step simulator-cuda
timeout "${SIM_S:-90}" python3 bench/bench_sim.py --cuda --skip-cpu --out "$OUT/sim_cuda.json" >"$OUT/sim_cuda.log" 2>&1
tail -n 3 "$OUT/sim_cuda.log"
step done
