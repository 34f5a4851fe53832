#!/usr/bin/env bash
# mnist_bilstm on corrupted MNIST files: each must give a non-zero exit and one clear message
# naming the file, never a crash. Usage: example_bad_input.sh MNIST_BILSTM DATA_DIR
# Exits 77 (skipped) when DATA_DIR lacks the dataset.
set -uo pipefail
bin=$1
data=$2
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [[ -f $data/$f ]] || { echo "skip: $data/$f missing (scripts/fetch-mnist.sh $data)"; exit 77; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
run_case() {  # name, file to corrupt, expected words
  local name=$1 file=$2 words=$3
  local out rc
  out=$("$bin" --data "$tmp/$name" --epochs 1 --train-limit 128 --verbose 0 2>&1)
  rc=$?
  if ((rc == 0 || rc > 128)); then
    echo "FAIL $name: exit code $rc"; fail=1; return
  fi
  if ! grep -q -- "$tmp/$name/$file" <<<"$out" || ! grep -qi -- "$words" <<<"$out"; then
    echo "FAIL $name: message does not name $file / '$words':"; echo "$out"; fail=1; return
  fi
  echo "ok   $name (exit $rc): $(grep -i error <<<"$out" | head -1)"
}
setup() {
  mkdir -p "$tmp/$1"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    ln -s "$(cd "$data" && pwd)/$f" "$tmp/$1/$f"
  done
}
# truncated image file
setup truncated; rm "$tmp/truncated/t10k-images-idx3-ubyte"
head -c 5000000 "$data/t10k-images-idx3-ubyte" >"$tmp/truncated/t10k-images-idx3-ubyte"
run_case truncated t10k-images-idx3-ubyte truncated
# wrong magic number
setup magic; rm "$tmp/magic/train-images-idx3-ubyte"
{ printf '\x00\x00\x08\x01'; tail -c +5 "$data/train-images-idx3-ubyte"; } >"$tmp/magic/train-images-idx3-ubyte"
run_case magic train-images-idx3-ubyte magic
# fewer labels than images: a consistent labels file holding 9000 labels
setup fewer; rm "$tmp/fewer/t10k-labels-idx1-ubyte"
{ printf '\x00\x00\x08\x01\x00\x00\x23\x28'; tail -c +9 "$data/t10k-labels-idx1-ubyte" | head -c 9000; } >"$tmp/fewer/t10k-labels-idx1-ubyte"
run_case fewer t10k-labels-idx1-ubyte labels
# label out of range
setup range; rm "$tmp/range/train-labels-idx1-ubyte"
{ head -c 100 "$data/train-labels-idx1-ubyte"; printf '\x0c'; tail -c +102 "$data/train-labels-idx1-ubyte"; } >"$tmp/range/train-labels-idx1-ubyte"
run_case range train-labels-idx1-ubyte label
# a CPU path that does not exist, through the environment: an error naming the variable and the
# paths, before any work
out=$(FASTNN_ISA=sse9 "$bin" --data "$data" --epochs 1 --train-limit 128 --verbose 0 2>&1)
rc=$?
if ((rc == 0 || rc > 128)) || ! grep -q "FASTNN_ISA='sse9'.*avx512" <<<"$out"; then
  echo "FAIL FASTNN_ISA=sse9 (exit $rc):"; echo "$out"; fail=1
else
  echo "ok   FASTNN_ISA=sse9 (exit $rc): $out"
fi
exit $fail
