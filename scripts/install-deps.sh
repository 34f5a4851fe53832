#!/usr/bin/env bash
# Installs the Debian packages fastnn's build, tests, example and benchmarks need.
# Only missing packages are installed; as root it runs apt-get, otherwise it prints the command.
#   scripts/install-deps.sh            build + tests + example
#   scripts/install-deps.sh --all      also the PyTorch peer, plotting and fuzzing tools
# The w* packages are the word lists in /usr/share/dict of examples/lang_id (and its ctest).
# libopenmpi-dev and openmpi-bin are Open MPI, for data-parallel training (fastnn::mpi, its mpirun tests).
# python3-onnx, and Node.js with npm, check the ONNX export: ONNX Runtime from npm
# (scripts/fetch-onnxruntime.sh) runs the exported models, onnx.checker validates them. Debian's
# nodejs and npm are installed only where no `node` and `npm` exist (a NodeSource nodejs, which
# bundles npm, conflicts with Debian's npm package).
# libdnnl-dev is oneDNN, for the peer benchmark bench/onednn_peer (bench/compare --onednn).
# dataset-fashion-mnist is Fashion-MNIST (gzip IDX files in /usr/share/datasets/fashion-mnist) and
# libtorch-dev is LibTorch 1.13's C++ API, for the CNN benchmark bench/fashion-cnn-compare and its
# LibTorch peer bench/fashion_cnn_libtorch.
set -euo pipefail
pkgs=(build-essential cmake libeigen3-dev zlib1g-dev libgtest-dev libbenchmark-dev libcli11-dev
      nlohmann-json3-dev python3-numpy python3-torch libdnnl-dev libopenmpi-dev openmpi-bin python3-onnx libopenblas0-pthread clang libclang-rt-dev locales
      dataset-fashion-mnist libtorch-dev
      wamerican wngerman wfrench wspanish witalian wportuguese wdutch wswedish wpolish)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  pkgs+=(nodejs npm)
fi
if [[ "${1:-}" == "--all" ]]; then
  pkgs+=(gnuplot-nox time)
fi
# The locale test (tests/test_locale.cpp) runs under de_DE.UTF-8, which Debian generates on demand.
need_locale() { ! locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$'; }
gen_locale() {
  if need_locale; then
    if [[ $(id -u) -eq 0 ]]; then
      echo "install-deps: generating the de_DE.UTF-8 locale"
      localedef -i de_DE -f UTF-8 de_DE.UTF-8
    else
      echo "install-deps: not root; run: sudo localedef -i de_DE -f UTF-8 de_DE.UTF-8" >&2
      return 1
    fi
  fi
}
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  gen_locale
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: not root; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
gen_locale
