#!/usr/bin/env bash
# Language identification, fastnn against PyTorch, in one command from a fresh clone: installs the
# dependencies with the nine word lists of /usr/share/dict (scripts/install-deps.sh; apt-get, as
# root), builds examples/lang_id in build/ (Release, -march=native) and runs bench/lang-id-compare,
# which writes bench/results/lang-id-cpu.md. Extra arguments go to bench/lang-id-compare:
#   scripts/lang-id.sh                          # 2 rounds of 5 epochs, 6,000 words per language
#   scripts/lang-id.sh --rounds 1 --epochs 1    # a quick run
# See docs/lang-id.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cuda=OFF
if [[ -x /usr/local/cuda/bin/nvcc || -n "$(command -v nvcc || true)" ]]; then cuda=${FASTNN_CUDA:-OFF}; fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFASTNN_CUDA="$cuda" >/dev/null
cmake --build build -j"$(nproc)" --target lang_id
exec /usr/bin/python3 bench/lang-id-compare build/examples/lang_id "$@"
