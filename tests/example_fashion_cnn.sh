#!/usr/bin/env bash
# fashion_cnn trained briefly: it must exit 0, print the `initial:` line, one EPOCH line and end
# with "final: ... val_acc X" (X a number in [0, 1]); --init-weights-out writes a file that
# --init-weights reads back (the same `initial:` line); a directory without the IDX files must
# give exit 1 and a message naming the file it looked for.
# Usage: example_fashion_cnn.sh FASHION_CNN DATA_DIR; exits 77 (skipped) when DATA_DIR lacks the
# training images (scripts/install-deps.sh installs dataset-fashion-mnist).
set -uo pipefail
bin=$1 data=$2
[[ -e $data/train-images-idx3-ubyte.gz || -e $data/train-images-idx3-ubyte ]] || { echo "skip: no data in $data"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$("$bin" --data "$data" --epochs 1 --limit 512 --threads 1 --init-weights-out "$tmp/init.safetensors" 2>&1)
rc=$?
echo "$out" | tail -4
[[ $rc -eq 0 ]] || { echo "FAIL: exit $rc"; exit 1; }
[[ $(grep -c '^EPOCH 1 ' <<<"$out") -eq 1 ]] || { echo "FAIL: no EPOCH 1 line"; exit 1; }
acc=$(tail -n 2 <<<"$out" | sed -n 's/^final: .* val_acc \([0-9.]*\)$/\1/p')
if [[ -z $acc ]] || ! awk -v a="$acc" 'BEGIN { exit !(a >= 0 && a <= 1) }'; then
  echo "FAIL: no 'final: ... val_acc X' line with X in [0, 1]"; exit 1
fi
first=$(grep '^initial:' <<<"$out")
again=$("$bin" --data "$data" --epochs 0 --init-weights "$tmp/init.safetensors" --seed 7 2>&1 | grep '^initial:')
[[ -n $first && $first == "$again" ]] || { echo "FAIL: --init-weights gave '$again', expected '$first'"; exit 1; }
echo "ok   $first (read back from --init-weights-out)"
bad=$("$bin" --data "$tmp" --epochs 1 2>&1)
rc=$?
[[ $rc -eq 1 ]] && grep -q "train-images-idx3-ubyte" <<<"$bad" || { echo "FAIL: missing data: exit $rc, $bad"; exit 1; }
echo "ok   missing data: exit 1 naming the file"
