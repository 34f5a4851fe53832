#!/usr/bin/env bash
# One command from a fresh clone: installs dependencies, fetches MNIST (tests that need it skip
# without it), builds everything and runs the test suite with ctest. Where nvcc exists the
# CUDA backend is built too (its tests skip without a GPU).
#   scripts/test.sh           main build + ctest, then the sanitizer build + ctest, then the fuzzers (60 s each)
#   scripts/test.sh --quick   main build + ctest only
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
jobs=$(nproc)
scripts/install-deps.sh
scripts/fetch-mnist.sh data || echo "test.sh: MNIST unavailable; the tests that need it will skip"

cuda=OFF
if [[ -x /usr/local/cuda/bin/nvcc || -n "$(command -v nvcc || true)" ]]; then cuda=ON; fi
echo "== main build (Release, FASTNN_CUDA=$cuda)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFASTNN_CUDA="$cuda" -DCMAKE_COMPILE_WARNING_AS_ERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
if [[ $cuda == ON ]]; then
  echo "== mnist_bilstm --device cuda must fail cleanly without a GPU (or train when one exists)"
  if ! build/examples/mnist_bilstm --device cuda --epochs 0 --data data >/tmp/fastnn-cuda-check.log 2>&1; then
    grep -q "CUDA device" /tmp/fastnn-cuda-check.log && echo "ok: $(tail -1 /tmp/fastnn-cuda-check.log)" \
      || { cat /tmp/fastnn-cuda-check.log; exit 1; }
  fi
fi
((quick)) && exit 0

echo "== sanitizer build (ASan + UBSan), whole test suite"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFASTNN_SANITIZE=ON -DFASTNN_NATIVE=OFF \
  -DFASTNN_BUILD_BENCHMARKS=OFF -DFASTNN_BUILD_EXAMPLES=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j"$jobs")

if [[ -x scripts/run-fuzzers.sh ]]; then
  echo "== fuzzers (libFuzzer + ASan + UBSan), ${FASTNN_FUZZ_SECONDS:-60} s each"
  scripts/run-fuzzers.sh "${FASTNN_FUZZ_SECONDS:-60}"
fi
echo "test.sh: all stages passed"
