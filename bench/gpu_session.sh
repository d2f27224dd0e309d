#!/usr/bin/env bash
# One session on the GPU machine (see BENCHMARKS.md): install, benchmark, GPU tests, simulator on CUDA.
# Every result goes to $OUT; each step is bounded so that one failure never costs the others.
#   bash bench/gpu_session.sh COMMIT      (COMMIT: the commit being measured, recorded in the JSON)
set -u
OUT=${OUT:-bench/results/session}
mkdir -p "$OUT"
export HWLAB_COMMIT=${1:-unknown}
# what was measured, whatever the commit says: one digest of the kernel and model sources (BENCHMARKS.md)
export HWLAB_SOURCE_SHA=$(cat kernels/*.py kernels/cuda/*.cu sim/gpu.py | sha256sum | cut -c1-16)
start=$(date +%s)
step() { echo "== $1 at $(( $(date +%s) - start ))s" | tee -a "$OUT/session.log"; }

step install
if ls .whl/*.whl >/dev/null 2>&1; then  # the peers' wheels, where the run times them (BENCHMARKS.md)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$OUT/session.log" 2>&1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/hwlab . \
    >>"$OUT/session.log" 2>&1
# The device image's numba-cuda still registers numpy.row_stack, which numpy 2.5 removed: give it the
# alias it expects (vstack, numpy's own definition of row_stack) for this session's processes only.
mkdir -p /tmp/shim
printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' >/tmp/shim/sitecustomize.py
export PYTHONPATH=/tmp/shim:/tmp/hwlab:/tmp/site:bench
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv >"$OUT/nvidia-smi.csv" 2>&1

step kernels-benchmark
timeout "${BENCH_S:-300}" python3 -P bench/gpu_kernels.py --out "$OUT" --compile-workers 12 ${BENCH_ARGS:-} >"$OUT/gpu_kernels.log" 2>&1
tail -n 3 "$OUT/gpu_kernels.log"

step gpu-tests
# -P: the checkout's hwlab/ folder must not shadow the installed package (its subpackages live elsewhere).
# First every test of the asynchronous, TRIP and CuPy kernels (the tensor-core int_mma included) compiled on the
# GPU, then the split-K, NaN and prepared-launch tests of the synchronous kernels, then the gpu-marked rest.
pytest() { python3 -P -m pytest -q -p no:cacheprovider --rootdir . -o addopts="--strict-markers -ra" "$@"; }
timeout "${TESTS_S:-150}" pytest tests/test_async_trip.py tests/test_cupy_kernels.py tests/test_cupy_mma.py \
    >"$OUT/gpu_tests.log" 2>&1
tail -n 3 "$OUT/gpu_tests.log"
timeout "${TESTS_S:-150}" pytest tests/test_kernels.py -k "nan_in_x or split_k or saturate or prepared" \
    >>"$OUT/gpu_tests.log" 2>&1
tail -n 3 "$OUT/gpu_tests.log"
timeout "${TESTS_S:-150}" pytest -m gpu tests/test_gpu_kernels.py tests/test_gpu.py tests/test_gpu_sim.py \
    >>"$OUT/gpu_tests.log" 2>&1
tail -n 3 "$OUT/gpu_tests.log"

step simulator-cuda
timeout "${SIM_S:-90}" python3 -P bench/bench_sim.py --cuda --skip-cpu --out "$OUT/sim_cuda.json" >"$OUT/sim_cuda.log" 2>&1
tail -n 3 "$OUT/sim_cuda.log"
step done
