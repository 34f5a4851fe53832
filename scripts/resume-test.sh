#!/usr/bin/env bash
# Checks that a resumed run of the example is bit-identical to an uninterrupted one:
#   A: mnist_bilstm --epochs 2
#   B: mnist_bilstm --epochs 1 --save ck; then mnist_bilstm --resume ck --epochs 2
# Same seed and threads. Compares the epoch rows of the two history CSVs (without the timing
# columns) and the exported weights files byte for byte; then --resume ck --epochs 0 validates.
#
#   scripts/resume-test.sh BUILD_DIR DATA_DIR [extra mnist_bilstm flags, e.g. --train-limit 5000]
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR DATA_DIR [flags...]}
data=${2:?usage: $0 BUILD_DIR DATA_DIR [flags...]}
shift 2
bin=$build/examples/mnist_bilstm
work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-resume.XXXXXX")
trap 'rm -rf "$work"' EXIT
common=(--data "$data" --verbose 2 --seed 7 --threads 2 "$@")

"$bin" "${common[@]}" --epochs 2 --history-csv "$work/a.csv" --export-weights "$work/a.safetensors" >"$work/a.log"
"$bin" "${common[@]}" --epochs 1 --history-csv "$work/b.csv" --save "$work/ck.safetensors" >"$work/b1.log"
"$bin" "${common[@]}" --epochs 2 --history-csv "$work/b.csv" --resume "$work/ck.safetensors" \
  --export-weights "$work/b.safetensors" >"$work/b2.log"
grep -h '^Resumed' "$work/b2.log"

echo "uninterrupted:"; cut -d, -f1-5 "$work/a.csv"
echo "1 epoch + resume (appended to the same CSV):"; cut -d, -f1-5 "$work/b.csv"
status=0
if diff <(cut -d, -f1-5 "$work/a.csv") <(cut -d, -f1-5 "$work/b.csv") >/dev/null; then
  echo "history: identical (epoch, loss, accuracy, val_loss, val_accuracy)"
else
  echo "history: DIFFERENT"; status=1
fi
if cmp -s "$work/a.safetensors" "$work/b.safetensors"; then
  echo "weights after epoch 2: byte-identical ($(stat -c %s "$work/a.safetensors") bytes)"
else
  echo "weights after epoch 2: DIFFERENT"; status=1
fi
"$bin" "${common[@]}" --epochs 0 --resume "$work/ck.safetensors" | grep '^validate'
exit $status
