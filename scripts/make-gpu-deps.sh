#!/usr/bin/env bash
# Builds the offline dependency folder that scripts/gpu-check.sh uses on a GPU machine without
# internet (Eigen, CLI11, nlohmann_json, Google Benchmark, GoogleTest sources, zlib, cuDNN
# headers, gzipped MNIST), copied from this Debian machine. Carry it to the GPU machine with the
# device tool's `carry: [".deps"]`.
#   scripts/make-gpu-deps.sh [DIR]     (default: .deps in the repository root; ~28 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-.deps}
scripts/install-deps.sh
scripts/fetch-mnist.sh data
P=$D/prefix
L=/usr/lib/x86_64-linux-gnu
mkdir -p "$P/include" "$P/share/eigen3" "$P/share/cmake" "$P/lib/x86_64-linux-gnu/cmake" \
  "$D/src" "$D/zlib/include" "$D/zlib/lib" "$D/cudnn/include" "$D/mnist"
cp -r /usr/include/eigen3 /usr/include/CLI /usr/include/nlohmann /usr/include/benchmark "$P/include/"
cp -r /usr/share/eigen3/cmake "$P/share/eigen3/"
cp -r /usr/share/cmake/CLI11 /usr/share/cmake/nlohmann_json "$P/share/cmake/"
cp -r "$L/cmake/benchmark" "$P/lib/x86_64-linux-gnu/cmake/"
for n in libbenchmark.so.1.7.1 libbenchmark.so.1debian libbenchmark.so; do
  cp -L "$L/libbenchmark.so" "$P/lib/x86_64-linux-gnu/$n"
done
cp "$L/libbenchmark_main.a" "$P/lib/x86_64-linux-gnu/"
rm -rf "$D/src/googletest" && cp -r /usr/src/googletest "$D/src/"
cp /usr/include/zlib.h /usr/include/zconf.h "$D/zlib/include/" 2>/dev/null ||
  cp /usr/include/zlib.h /usr/include/x86_64-linux-gnu/zconf.h "$D/zlib/include/"
cp "$L/libz.a" "$D/zlib/lib/"
cp /usr/local/cuda/include/cudnn*.h "$D/cudnn/include/" 2>/dev/null || echo "make-gpu-deps: no cuDNN headers here (optional)"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  gzip -9 -c "data/$f" >"$D/mnist/$f.gz"
done
du -sh "$D"
