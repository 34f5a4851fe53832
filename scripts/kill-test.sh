#!/usr/bin/env bash
# Kill test for atomic checkpoints with the real example: runs `mnist_bilstm --save CK` (a
# checkpoint at the end of every epoch, resuming from CK when it exists), kills it with SIGKILL
# ROUNDS times (default 20), and after every kill checks that CK still loads
# (`mnist_bilstm --resume CK --epochs 0` must exit 0 and validate) and that the number of epochs
# it holds never goes back. Odd rounds kill at a random moment; even rounds wait until a save
# has started (its temporary file exists) and kill it at once or up to about a millisecond
# later, i.e. in the middle of writing.
#
#   scripts/kill-test.sh BUILD_DIR DATA_DIR [ROUNDS]
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR DATA_DIR [ROUNDS]}
data=${2:?usage: $0 BUILD_DIR DATA_DIR [ROUNDS]}
rounds=${3:-20}
bin=$build/examples/mnist_bilstm
work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-kill.XXXXXX")
trap 'kill -9 "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
ck=$work/ck.safetensors
flags=(--data "$data" --train-limit 256 --batch-size 128 --verbose 2 --threads 1 --seed 3)

"$bin" "${flags[@]}" --epochs 1 --save "$ck" >/dev/null   # the first good checkpoint
last=1 mid_save=0 leftovers=0 failures=0
for ((round = 1; round <= rounds; round++)); do
  "$bin" "${flags[@]}" --epochs 100000 --save "$ck" --resume "$ck" >"$work/run.log" 2>&1 &
  pid=$!
  if ((round % 2 == 0)); then
    # Wait for a save to begin (up to 30 s), then kill it part-way.
    for ((i = 0; i < 300000; i++)); do
      compgen -G "$work/.ck.safetensors.tmp.*" >/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
    done
    for ((i = RANDOM % 200; i > 0; i--)); do :; done   # a few microseconds to a millisecond
  else
    sleep "$((RANDOM % 4)).$((RANDOM % 10))"
  fi
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null && { echo "round $round: the run ended before it was killed"; exit 1; } || true
  tmp=$(compgen -G "$work/.ck.safetensors.tmp.*" || true)
  if [ -n "$tmp" ]; then
    mid_save=$((mid_save + 1))
    leftovers=$((leftovers + $(echo "$tmp" | wc -l)))
    rm -f $tmp
  fi
  if out=$("$bin" "${flags[@]}" --epochs 0 --resume "$ck" 2>&1); then
    epoch=$(echo "$out" | sed -n 's/^validate .*(epoch \([0-9]*\)).*/\1/p')
    if [ -z "$epoch" ] || [ "$epoch" -lt "$last" ]; then
      echo "round $round: checkpoint went back from epoch $last to '${epoch}'"; failures=$((failures + 1))
    fi
    last=${epoch:-$last}
    echo "round $round: killed $([ -n "$tmp" ] && echo 'during a save' || echo 'between saves'); checkpoint loads (epoch $last)"
  else
    echo "round $round: CHECKPOINT DOES NOT LOAD:"; echo "$out" | tail -3; failures=$((failures + 1))
  fi
done
echo "kill-test: $rounds SIGKILLs, $mid_save during a save (temporary files left: $leftovers, removed);" \
     "$((rounds - failures)) of $rounds left a loadable checkpoint; last checkpoint after epoch $last"
[ "$failures" -eq 0 ]
