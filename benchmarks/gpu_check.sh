#!/usr/bin/env bash
# Everything that needs a GPU, in one call that stays inside 9 minutes: every cupy case of the test suite
# (on 8 pytest workers where pytest-xdist is installed), the emulated CUDA device checked against the GPU, then the benchmark.
#
#   benchmarks/gpu_check.sh [RESULTS_DIR]      (default: benchmarks/results)
#
# Writes RESULTS_DIR/gpu_<card>.json and the logs gpu_check_*.log beside it. CuPy is
# installed from local wheels (WHEELS_DIR, default ./wheels) only when it is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS_DIR="${1:-benchmarks/results}"
mkdir -p "$RESULTS_DIR"
export MPLBACKEND=Agg
if [ -z "${SCRATCHNET_DATA:-}" ]; then
    for candidate in shared/data/cifar-10-jpeg-derived ../shared/data/cifar-10-jpeg-derived; do
        [ -d "$candidate/cifar-10-batches-py" ] && export SCRATCHNET_DATA="$(cd "$candidate" && pwd)" && break
    done
fi

if ! python3 -c "import cupy" 2>/dev/null; then
    WHEELS_DIR="${WHEELS_DIR:-wheels}"
    echo "CuPy is missing: installing cupy-cuda13x from $WHEELS_DIR"
    python3 -m pip install --quiet --no-index --find-links "$WHEELS_DIR" cupy-cuda13x || {
        echo "could not install CuPy from $WHEELS_DIR"; exit 1; }
fi

card=$(python3 -c "
import re, cupy
name = cupy.cuda.runtime.getDeviceProperties(0)['name']
name = name.decode() if isinstance(name, bytes) else name
print(re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_'))") || { echo "no usable CUDA device"; exit 1; }
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$RESULTS_DIR/gpu_check_device.log" 2>&1

echo "== tests (every cupy case of the suite and the CUDA source compile check) =="
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider "${parallel[@]}" tests -k "cupy or cuda_source" \
    2>&1 | tee "$RESULTS_DIR/gpu_check_pytest_${card}.log"
tests_status=${PIPESTATUS[0]}

echo "== the emulated device against this GPU =="
scratch=$(mktemp -d)
if command -v "${CXX:-g++}" >/dev/null; then
    timeout 120 bash -c "python3 -m benchmarks.emulator_check --save '$scratch/gpu.npz' &&
        SCRATCHNET_CUDA_EMULATOR=1 python3 -m benchmarks.emulator_check --save '$scratch/emulated.npz' &&
        python3 -m benchmarks.emulator_check --compare '$scratch/gpu.npz' '$scratch/emulated.npz'" \
        2>&1 | tee "$RESULTS_DIR/gpu_check_emulator_${card}.log"
    emulator_status=${PIPESTATUS[0]}
else
    echo "no C++ compiler here: the emulated device cannot be checked" | tee "$RESULTS_DIR/gpu_check_emulator_${card}.log"
    emulator_status=1
fi

echo "== benchmark =="
timeout 180 python3 -m benchmarks.gpu --json "$RESULTS_DIR/gpu_${card}.json" --tutorial-timeout 90 \
    2>&1 | tee "$RESULTS_DIR/gpu_check_benchmark_${card}.log"
bench_status=${PIPESTATUS[0]}

echo "tests exit status: $tests_status; emulator check: $emulator_status; benchmark exit status: $bench_status"
[ "$tests_status" -eq 0 ] && [ "$emulator_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
