#!/usr/bin/env bash
# Builds the libFuzzer targets (clang++, AddressSanitizer + UndefinedBehaviorSanitizer) and runs
# each for SECONDS on a scratch copy of its seed corpus, all at once (one process per target; the
# machine's cores run them side by side):
#
#   scripts/run-fuzzers.sh 60            # both targets, 60 s each
#   scripts/run-fuzzers.sh 600 safetensors
#
# Prints the executions and the outcome of each run; exits non-zero if a fuzzer found a crash,
# a leak, a sanitizer report or a timeout (its reproducer is kept in fuzz-artifacts/).
# Environment: FASTNN_FUZZ_BUILD (build directory, default build-fuzz), JOBS (default 2).
set -euo pipefail

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(idx safetensors)
case $secs in '' | *[!0-9]*) echo "usage: $0 SECONDS [idx|safetensors]..." >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
build=${FASTNN_FUZZ_BUILD:-$root/build-fuzz}
command -v clang++ >/dev/null || { echo "run-fuzzers: clang++ not found (Debian: apt-get install clang)" >&2; exit 2; }

cmake -S "$root" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFASTNN_BUILD_FUZZERS=ON -DFASTNN_BUILD_TESTS=OFF -DFASTNN_BUILD_EXAMPLES=OFF \
  -DFASTNN_BUILD_BENCHMARKS=OFF -DFASTNN_NATIVE=OFF >/dev/null
for t in "${targets[@]}"; do
  cmake --build "$build" -j "${JOBS:-2}" --target "fuzz_$t" >/dev/null
done

work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts=$root/fuzz-artifacts
status=0
fuzz_one() {  # runs target $1; its report into $work/$1.result, its exit status as the function's
  local t=$1 corpus=$work/corpus-$1 log=$work/$1.log seeds final start elapsed execs cov result rc=0
  cp -r "$root/fuzz/corpus/$t" "$corpus"
  seeds=$(find "$corpus" -type f | wc -l)
  mkdir -p "$artifacts"
  start=$(date +%s)
  if "$build/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$artifacts/$t-" "$corpus" >"$log" 2>&1; then
    result="no finding"
  else
    rc=$?
    result="FINDING (exit $rc): see $artifacts and the log below"
  fi
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  final=$(find "$corpus" -type f | wc -l)
  echo "fuzz_$t: ${elapsed}s, ${execs:-?} executions ($(( ${execs:-0} / (elapsed > 0 ? elapsed : 1) ))/s), coverage ${cov:-?} edges, corpus $seeds -> $final files: $result" >"$work/$t.result"
  if [ $rc -ne 0 ]; then tail -n 60 "$log" >>"$work/$t.result"; fi
  return $rc
}
pids=()
for t in "${targets[@]}"; do
  fuzz_one "$t" &
  pids+=($!)
done
for i in "${!targets[@]}"; do
  wait "${pids[$i]}" || status=1
  cat "$work/${targets[$i]}.result"
done
rmdir "$artifacts" 2>/dev/null || true
exit $status
