#!/usr/bin/env bash
# mnist_rows trained briefly: it must exit 0 and its last line, "final: val_mse X baseline_mse Y
# (...)", must show the model below the row-copying baseline. A missing data directory must give
# exit 1 and a message naming the missing file.
# Usage: example_mnist_rows.sh MNIST_ROWS DATA_DIR [ARGS...]; exits 77 (skipped) when DATA_DIR
# lacks the dataset.
set -uo pipefail
bin=$1
data=$2
shift 2
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [[ -f $data/$f || -f $data/$f.gz ]] || { echo "skip: $data/$f missing (scripts/fetch-mnist.sh $data)"; exit 77; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
missing=$tmp/no-such-dir
out=$("$bin" --data "$missing" --epochs 1 --verbose 0 2>&1)
rc=$?
if ((rc != 1)) || ! grep -q -- "$missing/train-images-idx3-ubyte" <<<"$out"; then
  echo "FAIL missing data dir: exit $rc (expected 1), output:"; echo "$out"; exit 1
fi
echo "ok   missing data dir (exit 1): $out"

out=$("$bin" --data "$data" "$@")
rc=$?
echo "$out"
if ((rc != 0)); then echo "FAIL: exit code $rc"; exit 1; fi
last=$(tail -n 1 <<<"$out")
read -r val base < <(sed -n 's/^final: val_mse \([0-9.eE+-]*\) baseline_mse \([0-9.eE+-]*\) .*/\1 \2/p' <<<"$last")
if [[ -z ${val:-} || -z ${base:-} ]]; then echo "FAIL: last line is not 'final: val_mse X baseline_mse Y ...': $last"; exit 1; fi
if ! awk -v v="$val" -v b="$base" 'BEGIN { exit !(v < b) }'; then
  echo "FAIL: val_mse $val is not below baseline_mse $base"; exit 1
fi
echo "ok   val_mse $val < baseline_mse $base"
