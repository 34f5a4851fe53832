#!/usr/bin/env bash
# A rank that dies or stops mid-epoch must end the whole job, non-zero, within a time limit.
#   kill_rank.sh MPIEXEC TEST_BINARY kill|stop [LIMIT_SECONDS]
# kill: rank 1 gets SIGKILL (the MPI runtime notices the dead process and ends the job);
# stop: rank 1 gets SIGSTOP (it stays alive but silent: rank 0's wait times out after
#       FASTNN_DIST_TIMEOUT seconds and aborts the job).
# Both ranks train with FASTNN_TEST_LONG_RUN (tests/distributed/test_data_parallel.cpp) and
# would otherwise run for hours.
set -u
mpiexec=$1 bin=$2 mode=$3 limit=${4:-60}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/fastnn-kill-XXXXXX)
trap 'rm -rf "$dir"' EXIT
export FASTNN_TEST_LONG_RUN=$dir FASTNN_DIST_TIMEOUT=${FASTNN_DIST_TIMEOUT:-10}
"$mpiexec" --oversubscribe -np 2 "$bin" >"$dir/out.log" 2>&1 &
job=$!
for _ in $(seq 1 600); do  # wait (up to 60 s) until both ranks train
  [[ -s $dir/rank0.pid && -s $dir/rank1.pid ]] && break
  kill -0 "$job" 2>/dev/null || { echo "FAIL: the job ended before training"; cat "$dir/out.log"; exit 1; }
  sleep 0.1
done
[[ -s $dir/rank1.pid ]] || { echo "FAIL: rank 1 never started training"; cat "$dir/out.log"; kill -9 "$job"; exit 1; }
sleep 2  # mid-epoch
pid=$(cat "$dir/rank1.pid")
if [[ $mode == kill ]]; then kill -KILL "$pid"; else kill -STOP "$pid"; fi
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
start=$(now_ms)
status=
while :; do
  if ! kill -0 "$job" 2>/dev/null; then wait "$job"; status=$?; break; fi
  if (( $(now_ms) - start > limit * 1000 )); then
    echo "FAIL: the job still runs ${limit} s after rank 1 was sent SIG${mode^^}"
    kill -9 "$job" 2>/dev/null; pkill -9 -f "$bin" 2>/dev/null
    cat "$dir/out.log"; exit 1
  fi
  sleep 0.1
done
elapsed_ms=$(( $(now_ms) - start ))
elapsed=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
kill -9 "$pid" 2>/dev/null  # a stopped rank the runtime left behind
echo "--- job output (last lines)"; tail -n 8 "$dir/out.log"
echo "rank 1 sent SIG${mode^^}: the job ended with status $status after ${elapsed} s (limit ${limit} s)"
[[ $status -ne 0 ]] || { echo "FAIL: exit status 0"; exit 1; }
if [[ $mode == stop ]] && ! grep -q "did not complete within" "$dir/out.log"; then
  echo "FAIL: no timeout message"; exit 1
fi
echo "ok"
