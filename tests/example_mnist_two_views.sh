#!/usr/bin/env bash
# mnist_two_views trained briefly, the graph and the row-only reference: each must exit 0, print its summary
# (the graph's with the "Connected to" column and both views feeding the concatenation), one EPOCH line and
# end with "final: ... val_acc X" (X in [0, 1]); a bad --model gives exit 1 and a message naming it.
# Usage: example_mnist_two_views.sh MNIST_TWO_VIEWS DATA_DIR; exits 77 (skipped) without the MNIST files.
set -uo pipefail
bin=$1 data=$2
[[ -e $data/train-images-idx3-ubyte.gz || -e $data/train-images-idx3-ubyte ]] || { echo "skip: no data in $data"; exit 77; }
for model in two_views rows; do
  out=$("$bin" --data "$data" --model $model --epochs 1 --limit 512 --units 16 --threads 1 2>&1)
  rc=$?
  echo "$out" | tail -3
  [[ $rc -eq 0 ]] || { echo "FAIL: $model: exit $rc"; exit 1; }
  [[ $(grep -c '^EPOCH 1 ' <<<"$out") -eq 1 ]] || { echo "FAIL: $model: no EPOCH 1 line"; exit 1; }
  acc=$(tail -n 1 <<<"$out" | sed -n 's/^final: .* val_acc \([0-9.]*\)$/\1/p')
  if [[ -z $acc ]] || ! awk -v a="$acc" 'BEGIN { exit !(a >= 0 && a <= 1) }'; then
    echo "FAIL: $model: no 'final: ... val_acc X' line with X in [0, 1]"; exit 1
  fi
  grep -q "Connected to" <<<"$out" || { echo "FAIL: $model: the summary has no Connected to column"; exit 1; }
done
grep -q "bidirectional\[0\]\[0\], bidirectional_1\[0\]\[0\]" <<<"$("$bin" --data "$data" --epochs 1 --limit 128 \
  --units 4 --threads 1 2>&1)" || { echo "FAIL: the concatenation does not read both views"; exit 1; }
# The auxiliary output: two losses, logged under Keras's names.
out=$("$bin" --data "$data" --epochs 1 --limit 256 --units 8 --threads 1 --aux-weight 0.3 2>&1)
rc=$?
[[ $rc -eq 0 ]] || { echo "$out" | tail -5; echo "FAIL: --aux-weight: exit $rc"; exit 1; }
grep -q '^outputs: digit_loss [0-9.]* aux_loss [0-9.]* val_digit_loss [0-9.]* val_aux_loss [0-9.]* ' <<<"$out" \
  || { echo "$out" | tail -5; echo "FAIL: --aux-weight: no per-output losses"; exit 1; }
grep -q '^final: .* val_acc [0-9.]*$' <<<"$out" || { echo "FAIL: --aux-weight: no final line"; exit 1; }
bad=$("$bin" --data "$data" --model columns 2>&1)
rc=$?
[[ $rc -eq 1 ]] && grep -q "columns" <<<"$bad" || { echo "FAIL: bad --model: exit $rc, $bad"; exit 1; }
echo "ok   both models trained, and the graph with an auxiliary output; a bad --model is exit 1 naming it"
