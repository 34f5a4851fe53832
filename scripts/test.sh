#!/usr/bin/env bash
# One command from a fresh clone: installs dependencies and ONNX Runtime (npm), fetches MNIST (tests that need it skip
# without it), builds everything and runs the test suite with ctest. Where nvcc exists the
# CUDA backend is built too (its tests skip without a GPU).
#   scripts/test.sh           main build + ctest, then the sanitizer build (the suites that parse
#                             input, the kernels, the examples) + ctest, then the
#                             ThreadSanitizer build of the Concurrency tests, then the fuzzers (60 s each)
#   scripts/test.sh --quick   main build + ctest only
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
jobs=$(nproc)
stage() { echo "== [$(date -u +%T)] $*"; }  # each stage with its start time, for the stage times
scripts/install-deps.sh
scripts/fetch-onnxruntime.sh
scripts/fetch-mnist.sh data || echo "test.sh: MNIST unavailable; the tests that need it will skip"

cuda=OFF
if [[ -x /usr/local/cuda/bin/nvcc || -n "$(command -v nvcc || true)" ]]; then cuda=ON; fi
stage "main build (Release, FASTNN_CUDA=$cuda)"
# The benchmarks are built (so a change that breaks them still fails CI) at -O0: no test runs them,
# and -O0 compiles them in about 60% of the time of -O3 (bench/results/ci-build-time-2026-12-04.md).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFASTNN_CUDA="$cuda" -DCMAKE_COMPILE_WARNING_AS_ERROR=ON \
  -DFASTNN_BENCH_UNOPTIMIZED=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
if [[ $cuda == ON ]]; then
  stage "mnist_bilstm --device cuda must fail cleanly without a GPU (or train when one exists)"
  if ! build/examples/mnist_bilstm --device cuda --epochs 0 --data data >/tmp/fastnn-cuda-check.log 2>&1; then
    grep -q "CUDA device" /tmp/fastnn-cuda-check.log && echo "ok: $(tail -1 /tmp/fastnn-cuda-check.log)" \
      || { cat /tmp/fastnn-cuda-check.log; exit 1; }
  fi
fi
((quick)) && exit 0

stage "sanitizer build (ASan + UBSan): the suites that parse input, the kernels, the examples on bad input"
# -O1 -g1 (line tables only): half the compile time of -O2 -g, and reports still name file and line.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DFASTNN_SANITIZE=ON -DFASTNN_NATIVE=OFF -DFASTNN_BUILD_BENCHMARKS=OFF -DFASTNN_BUILD_EXAMPLES=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j"$jobs")

stage "ThreadSanitizer build, the Concurrency tests (concurrent predict on one const model)"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFASTNN_TSAN=ON -DFASTNN_NATIVE=OFF \
  -DFASTNN_BUILD_BENCHMARKS=OFF -DFASTNN_BUILD_EXAMPLES=OFF -DFASTNN_CUDA=OFF >/dev/null
# ThreadSanitizer aborts at start-up with "FATAL: ThreadSanitizer: unexpected memory mapping" on
# kernels whose mmap randomisation has more entropy than its fixed memory layout expects (Debian 12's
# GCC 12 libtsan with vm.mmap_rnd_bits above 28). TSan needs no address-space randomisation, so its
# programs run under `setarch <arch> -R` (randomisation off) wherever that is permitted (some
# containers forbid it; there they run as they are). The build is wrapped too: it runs the test
# binary once to list its tests (gtest_discover_tests), and setarch's setting is inherited by
# child processes.
tsan_run=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
  tsan_run=(setarch "$(uname -m)" -R)
fi
export TSAN_OPTIONS='halt_on_error=1 second_deadlock_stack=1'
"${tsan_run[@]}" cmake --build build-tsan -j"$jobs" --target test_concurrency
# --no-tests=error: fails if no Concurrency test was found, as well as on any failure or race.
(cd build-tsan && "${tsan_run[@]}" ctest -R '^Concurrency\.' --no-tests=error --output-on-failure)
unset TSAN_OPTIONS

if [[ -x scripts/run-fuzzers.sh ]]; then
  stage "fuzzers (libFuzzer + ASan + UBSan), ${FASTNN_FUZZ_SECONDS:-60} s each"
  scripts/run-fuzzers.sh "${FASTNN_FUZZ_SECONDS:-60}"
fi
echo "test.sh: all stages passed at $(date -u +%T)"
