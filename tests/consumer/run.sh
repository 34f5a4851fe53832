#!/usr/bin/env bash
# run.sh BUILD_DIR WORK_DIR CUDA(ON|OFF) [PREFIX_PATH]: installs the fastnn build in BUILD_DIR
# into WORK_DIR/prefix (cmake --install), then configures, builds and runs tests/consumer against
# it with find_package(fastnn) -- the way a user's own project would. With CUDA=ON the consumer
# also requests the cuda component and links fastnn::cuda.
set -euo pipefail
build=$1 work=$2 cuda=$3 extra_prefix=${4:-}
src=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
# the installed tree: headers, package config, no kernel sources; the CUDA parts only with CUDA
test -f "$work/prefix/include/fastnn/fastnn.hpp"
test -f "$work/prefix/lib/cmake/fastnn/fastnnConfig.cmake"
if find "$work/prefix" -name '*.cu' | grep -q .; then echo "run.sh: a .cu file was installed" >&2; exit 1; fi
if [ "$cuda" = ON ]; then test -f "$work/prefix/lib/cmake/fastnn/fastnnCudaTargets.cmake"; fi
prefix="$work/prefix${extra_prefix:+;$extra_prefix}"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DFASTNN_CONSUMER_CUDA="$cuda" >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j 2
cd "$work"
"$work/build/consumer"
