#!/usr/bin/env bash
# Installs ONNX Runtime for Node.js (npm onnxruntime-node, which ships libonnxruntime for
# linux-x64) into DIR (default .onnxruntime/ in the repository), for the ONNX tests
# (tests/onnx) and bench/onnx-compare. --ignore-scripts: the package's install script only
# downloads GPU providers; the CPU library is in the package. Needs Debian's nodejs and npm
# (scripts/install-deps.sh). Does nothing when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.onnxruntime}
version=1.30.0
pkg="$dir/node_modules/onnxruntime-node/package.json"
if [[ -f $pkg ]] && grep -q "\"version\": \"$version\"" "$pkg"; then
  echo "fetch-onnxruntime: onnxruntime-node $version present in $dir"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-onnxruntime: no npm (scripts/install-deps.sh installs Debian's nodejs and npm)" >&2; exit 1; }
mkdir -p "$dir"
echo "fetch-onnxruntime: npm install onnxruntime-node@$version into $dir"
npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --no-save "onnxruntime-node@$version" >/dev/null
node -e "const o = require(require('path').resolve('$dir/node_modules/onnxruntime-node')); \
  console.log('fetch-onnxruntime: ONNX Runtime', o.env.versions.common || '$version', 'loads')"
