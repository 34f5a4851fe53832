#!/usr/bin/env bash
# Mutation test with the real programs: hundreds of mutated checkpoint, weights and MNIST IDX
# files (truncations, flipped bytes, garbage headers, absurd lengths, appended bytes), each
# loaded by a fresh process. Every load must end with a clean exit and a message: status 1 and
# "error: <the file>: ..." on stderr, never a signal, never a sanitizer report. Best run on a
# sanitizer build:
#
#   cmake -S . -B build-asan -DFASTNN_SANITIZE=ON -DFASTNN_BUILD_BENCHMARKS=OFF -DFASTNN_NATIVE=OFF
#   cmake --build build-asan -j2 && scripts/mutate-test.sh build-asan data
#
#   scripts/mutate-test.sh BUILD_DIR DATA_DIR [CHECKPOINT_MUTANTS [IDX_MUTANTS]]   (default 200 150)
#
# Checkpoints go through `mnist_bilstm --resume M --epochs 0` (load_checkpoint) and
# `predict_mnist M` (load_model); weights files through predict_mnist; IDX files through
# `mnist_bilstm --data DIR --epochs 0` with one of the four MNIST files replaced. A flipped byte
# in the pixels or labels of an IDX file can give another valid file (IDX has no checksum), so
# those mutants may also load (status 0); every other mutant must be rejected.
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR DATA_DIR [CHECKPOINT_MUTANTS [IDX_MUTANTS]]}
data=$(cd "${2:?usage: $0 BUILD_DIR DATA_DIR}" && pwd)
n_ck=${3:-200}
n_idx=${4:-150}
bilstm=$build/examples/mnist_bilstm
predict=$build/examples/predict_mnist
work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-mutate.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Sanitizer reports get their own exit codes, and are also looked for in the output.
export ASAN_OPTIONS=${ASAN_OPTIONS:-exitcode=86:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-exitcode=87:halt_on_error=1:print_stacktrace=1}
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$data/$f" ] || { echo "mutate-test: $data/$f missing (scripts/fetch-mnist.sh $data)"; exit 2; }
done
python=$(command -v python3 || command -v /usr/bin/python3)

# Good files to mutate: a checkpoint and a weights file of the reference model.
"$bilstm" --data "$data" --train-limit 256 --epochs 1 --verbose 0 --save "$work/good.ck" \
  --export-weights "$work/good.weights" >/dev/null
mkdir -p "$work/ck" "$work/idx"
"$python" - "$work" "$data" "$n_ck" "$n_idx" <<'PY'
import gzip, os, random, struct, sys
work, data, n_ck, n_idx = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(20240605)

def mutants(good, header_end, n, prefix):
    """(name, bytes, must_fail) for n mutations of `good`; must_fail is decided by the caller."""
    out = []
    kinds = ["truncate", "flip", "flip-header", "garbage-header", "length", "append", "random"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        b = bytearray(good)
        if kind == "truncate":
            at = rng.randrange(0, 24) if i % 3 == 0 else rng.randrange(0, len(good))
            b = b[:at]
        elif kind in ("flip", "flip-header"):
            at = rng.randrange(0, header_end if kind == "flip-header" else len(good))
            b[at] ^= rng.randrange(1, 256)
            kind = f"flip@{at}"
        elif kind == "garbage-header":
            ln = rng.randrange(1, min(header_end, 64) + 1)
            at = rng.randrange(0, header_end - ln + 1)
            b[at:at + ln] = bytes(rng.randrange(256) for _ in range(ln))
        elif kind == "length":
            v = rng.choice([0, 1, 7, 0xFFFFFFFF, 100000001, 1 << 40, 1 << 63, (1 << 64) - 1, len(good), len(good) - 8])
            b[0:8] = struct.pack("<Q", v)
        elif kind == "append":
            b += bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8, 1000])))
        else:
            b = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
        if bytes(b) == good:
            continue
        out.append((f"{prefix}-{i:03d}-{kind}", bytes(b)))
    return out

for src in ("good.ck", "good.weights"):
    good = open(os.path.join(work, src), "rb").read()
    hlen = struct.unpack("<Q", good[:8])[0]
    n = n_ck if src == "good.ck" else n_ck // 4
    for name, b in mutants(good, 8 + hlen, n, src.replace("good.", "")):
        open(os.path.join(work, "ck", name), "wb").write(b)

# IDX: the test labels and images, raw and gzip. A flip past the header may give a valid file.
labels = open(os.path.join(data, "t10k-labels-idx1-ubyte"), "rb").read()
images = open(os.path.join(data, "t10k-images-idx3-ubyte"), "rb").read()
sources = [("t10k-labels-idx1-ubyte", labels, 8, False), ("t10k-images-idx3-ubyte", images, 16, False),
           ("t10k-labels-idx1-ubyte.gz", gzip.compress(labels, mtime=0), 10, True)]
for fname, good, hend, gz in sources:
    for name, b in mutants(good, hend, n_idx // len(sources), fname.split("-")[1] + ("gz" if gz else "")):
        may_load = False
        if "flip@" in name:
            at = int(name.split("@")[1])
            may_load = (3 <= at < 10 or at == len(good) - 9) if gz else at >= hend
        if "garbage-header" in name and gz:
            may_load = True  # gzip's header fields (flags, mtime, OS) are not checked
        d = os.path.join(work, "idx", name + (".may" if may_load else ".must"))
        os.makedirs(d)
        for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            if f != fname.replace(".gz", ""):
                os.symlink(os.path.join(data, f), os.path.join(d, f))
        open(os.path.join(d, fname), "wb").write(b)
PY

crashes=0 rejected=0 loaded=0 bad=0 total=0
# check NAME EXPECT(must|may) FILE CMD...: runs CMD, classifies its end.
check() {
  local name=$1 expect=$2 file=$3; shift 3
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  total=$((total + 1))
  if [ $rc -ge 86 ] || echo "$out" | grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:|Segmentation|terminate called'; then
    crashes=$((crashes + 1)); echo "CRASH ($rc) $name:"; echo "$out" | tail -20
  elif [ $rc -eq 1 ] && echo "$out" | grep -q "error: .*$file"; then
    rejected=$((rejected + 1))
  elif [ $rc -eq 0 ] && [ "$expect" = may ]; then
    loaded=$((loaded + 1))
  else
    bad=$((bad + 1)); echo "UNEXPECTED (status $rc) $name:"; echo "$out" | tail -3
  fi
}

for f in "$work"/ck/*; do
  name=$(basename "$f")
  check "$name (predict_mnist)" must "$f" "$predict" "$f" "$data" 10 "$work/p.out"
  case $name in ck-*) check "$name (mnist_bilstm --resume)" must "$f" "$bilstm" --data "$data" --resume "$f" --epochs 0 --verbose 0 ;; esac
done
n_ck_files=$(ls "$work/ck" | wc -l)
ck_total=$total ck_rejected=$rejected
for d in "$work"/idx/*; do
  expect=${d##*.}
  file=$(find "$d" -maxdepth 1 -type f | head -1)
  check "$(basename "$d")" "$expect" "$file" "$bilstm" --data "$d" --epochs 0 --verbose 0
done
n_idx_dirs=$(ls "$work/idx" | wc -l)
echo "mutate-test: $n_ck_files mutated checkpoint/weights files ($ck_total loads): $ck_rejected rejected with status 1 and a message naming the file"
echo "mutate-test: $n_idx_dirs mutated IDX files: $((rejected - ck_rejected)) rejected with status 1 and a message naming the file, $loaded loaded (valid after a data-byte flip)"
echo "mutate-test: $crashes crashes or sanitizer reports, $bad other unexpected outcomes"
[ $crashes -eq 0 ] && [ $bad -eq 0 ]
