#!/bin/sh
# mnist_bilstm --export-onnx: trains briefly on MNIST, exports, and checks the file with
# onnx.checker and ONNX Runtime (a [4, 10] distribution for 4 images). Skips (77) without MNIST,
# node, onnxruntime-node or python3-onnx.
#   example_export.sh MNIST_BILSTM DATA_DIR WORK_DIR ORT_NODE_DIR
set -eu
exe=$1 data=$2 work=$3 ort=$4
here=$(dirname "$0")
[ -e "$data/t10k-images-idx3-ubyte" ] || [ -e "$data/t10k-images-idx3-ubyte.gz" ] || { echo "SKIP: no MNIST in $data"; exit 77; }
command -v node >/dev/null || { echo "SKIP: no node (Debian: nodejs)"; exit 77; }
[ -f "$ort/package.json" ] || { echo "SKIP: no onnxruntime-node in $ort (scripts/fetch-onnxruntime.sh)"; exit 77; }
/usr/bin/python3 -c "import onnx" 2>/dev/null || { echo "SKIP: no python3-onnx"; exit 77; }
rm -rf "$work"
mkdir -p "$work"
"$exe" --data "$data" --train-limit 512 --epochs 1 --verbose 0 --threads 1 --export-onnx "$work/mnist_bilstm.onnx"
[ -s "$work/mnist_bilstm.onnx" ] || { echo "FAIL: no $work/mnist_bilstm.onnx"; exit 1; }
[ "$(ls "$work")" = "mnist_bilstm.onnx" ] || { echo "FAIL: other files left in $work: $(ls "$work")"; exit 1; }
/usr/bin/python3 "$here/onnx_checker.py" - "$work/mnist_bilstm.onnx"
node "$here/ort_check.js" --classifier "$work/mnist_bilstm.onnx" "$ort"
