#!/usr/bin/env bash
# lang_id trained briefly: it must exit 0 and end with "final: ... val_acc X" (X a number in
# [0, 1]) with a validation loss below the untrained model's, with one EPOCH line per epoch, the
# --init choice (keras unless given) in the header and the --model's layers (bigru unless given)
# in the summary. A missing word list must give exit 1 and a message naming the file and its Debian
# package.
# Usage: example_lang_id.sh LANG_ID DICT_DIR [ARGS...]; exits 77 (skipped) when DICT_DIR lacks
# one of the nine word lists (scripts/install-deps.sh installs them).
set -uo pipefail
bin=$1
dict=$2
shift 2
for f in american-english ngerman french spanish italian portuguese dutch swedish polish; do
  [[ -f $dict/$f ]] || { echo "skip: $dict/$f missing (scripts/install-deps.sh installs the word lists)"; exit 77; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
missing=$tmp/no-such-dir
out=$("$bin" --dict-dir "$missing" --epochs 1 2>&1)
rc=$?
if ((rc != 1)) || ! grep -q -- "$missing/american-english" <<<"$out" || ! grep -q -- "wamerican" <<<"$out"; then
  echo "FAIL missing word list: exit $rc (expected 1, naming the file and wamerican), output:"; echo "$out"; exit 1
fi
echo "ok   missing word list (exit 1): $out"

out=$("$bin" --dict-dir "$dict" --write-split "$tmp/split.tsv" "$@")
rc=$?
echo "$out"
if ((rc != 0)); then echo "FAIL: exit code $rc"; exit 1; fi
if ! grep -q '^EPOCH 1 train_s=[0-9.]* .* val_acc=[0-9.]*$' <<<"$out"; then echo "FAIL: no 'EPOCH 1 ... val_acc=X' line"; exit 1; fi
last=$(tail -n 1 <<<"$out")
acc=$(sed -n 's/^final: .* val_acc \([0-9.]*\)$/\1/p' <<<"$last")
if [[ -z $acc ]] || ! awk -v a="$acc" 'BEGIN { exit !(a >= 0 && a <= 1) }'; then
  echo "FAIL: last line is not 'final: ... val_acc X' with X in [0, 1]: $last"; exit 1
fi
echo "ok   val_acc $acc"
# training lowers the validation loss below the untrained model's
init_loss=$(sed -n 's/^initial: val_loss \([0-9.]*\) val_acc [0-9.]*$/\1/p' <<<"$out")
final_loss=$(sed -n 's/^final: .* val_loss \([0-9.]*\) val_acc [0-9.]*$/\1/p' <<<"$last")
if [[ -z $init_loss || -z $final_loss ]] || ! awk -v a="$init_loss" -v b="$final_loss" 'BEGIN { exit !(b < a) }'; then
  echo "FAIL: validation loss not lowered by training: initial '$init_loss', final '$final_loss'"; exit 1
fi
echo "ok   val_loss $init_loss -> $final_loss"
# the initialisation (--init keras|torch, default keras) named in the header
want=keras
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; ++i)); do [[ ${args[i]} == --init ]] && want=${args[i + 1]}; done
if ! grep -q "^Train on .*, init $want)\$" <<<"$out"; then echo "FAIL: no 'Train on ... init $want)' line"; exit 1; fi
echo "ok   init $want"
# the model (--model bigru|transformer, default bigru) in the summary
model=bigru
for ((i = 0; i + 1 < ${#args[@]}; ++i)); do [[ ${args[i]} == --model ]] && model=${args[i + 1]}; done
layer=$([[ $model == transformer ]] && echo MultiHeadAttention || echo Bidirectional)
if ! grep -q "($layer)" <<<"$out"; then echo "FAIL: --model $model, but no $layer layer in the summary"; exit 1; fi
echo "ok   model $model ($layer in the summary)"
# the split file: every line train|val<TAB>label<TAB>word, both splits present, labels 0..8
if ! awk -F'\t' 'NF != 3 || ($1 != "train" && $1 != "val") || $2 !~ /^[0-8]$/ { bad = 1 } { n[$1]++ }
     END { exit bad || !n["train"] || !n["val"] }' "$tmp/split.tsv"; then
  echo "FAIL: --write-split wrote a malformed split:"; head -5 "$tmp/split.tsv"; exit 1
fi
echo "ok   split file: $(grep -c '^train' "$tmp/split.tsv") train, $(grep -c '^val' "$tmp/split.tsv") val lines"
