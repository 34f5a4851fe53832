#!/usr/bin/env bash
# One command from a fresh clone: installs dependencies, fetches MNIST into data/, builds
# (Release, -march=native) and trains examples/mnist_bilstm. Extra arguments go to the example:
#   scripts/train-example.sh                     # the reference run: 30 epochs
#   scripts/train-example.sh --epochs 1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/fetch-mnist.sh data
cuda=OFF
if [[ -x /usr/local/cuda/bin/nvcc || -n "$(command -v nvcc || true)" ]]; then cuda=${FASTNN_CUDA:-OFF}; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFASTNN_CUDA="$cuda" >/dev/null
cmake --build build -j"$(nproc)" --target mnist_bilstm
exec build/examples/mnist_bilstm --data data "$@"
