#!/usr/bin/env bash
# run.sh BUILD_DIR WORK_DIR CUDA(ON|OFF) [PREFIX_PATH]: installs the fastnn build in BUILD_DIR
# into WORK_DIR/prefix (cmake --install), then configures, builds and runs tests/consumer against
# it with find_package(fastnn) -- the way a user's own project would. With CUDA=ON the consumer
# also requests the cuda component and links fastnn::cuda. Where the build has fastnn::mpi, it also
# builds mpi_consumer with the mpi component and runs it on two ranks (mpirun).
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
mpi=OFF
if [ -f "$work/prefix/lib/cmake/fastnn/fastnnMpiTargets.cmake" ]; then mpi=ON; fi
prefix="$work/prefix${extra_prefix:+;$extra_prefix}"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DFASTNN_CONSUMER_CUDA="$cuda" -DFASTNN_CONSUMER_MPI="$mpi" >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j 2
cd "$work"
"$work/build/consumer"
if [ "$mpi" = ON ]; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 FASTNN_DIST_TIMEOUT=60 \
    mpirun --oversubscribe -np 2 "$work/build/mpi_consumer"
fi
