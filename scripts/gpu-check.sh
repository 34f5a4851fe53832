#!/usr/bin/env bash
# gpu-check.sh OUT_DIR MNIST_DIR
#
# One command for a machine with an NVIDIA GPU: configures fastnn with
# -DFASTNN_CUDA=ON (Release), builds the CUDA tests, the example and the GPU benchmark, runs the
# CUDA tests, trains 3 epochs of `mnist_bilstm --device cuda` (and 2 more with FASTNN_CUDA_GRAPH=0, the
# eager baseline without CUDA graphs), runs the GPU benchmark and, when
# python3 has PyTorch with CUDA, the PyTorch cuDNN peer (bench/gpu/torch_peer.py), then writes
# OUT_DIR/gpu-results.md (device, driver, CUDA/cuDNN versions, test summary, epoch times,
# validation accuracies, PyTorch's epoch times and the ratio). Needs no internet.
#
# Then the same training with TF32 tensor-core math allowed (mnist_bilstm --tf32, and the peer
# with --tf32): an opt-in mode, reported separately; the targets are judged on the default run.
#
# Files written to OUT_DIR: gpu-results.md, gpu-check.log (every step's output),
# fastnn-history.csv, fastnn-eager-history.csv, fastnn-tf32-history.csv, torch-history.csv,
# torch-tf32-history.csv, bench_gpu.json.
#
# Environment:
#   BUILD_DIR  build tree (default: <repo>/build-gpu)
#   DEPS_DIR   offline dependencies (default: <repo>/.deps when it exists), laid out as
#              DEPS_DIR/prefix (an install prefix with Eigen, CLI11, nlohmann_json, Google Benchmark
#              and their CMake configs), DEPS_DIR/src/googletest (sources, built here),
#              DEPS_DIR/zlib/{include,lib} (used if the system has no zlib.h) and
#              DEPS_DIR/cudnn/include (cuDNN headers, used only if none are found).
#              scripts/make-gpu-deps.sh recreates it; by hand, on Debian/Ubuntu with the packages:
#                P=.deps/prefix; mkdir -p $P/include $P/share/eigen3 $P/share/cmake $P/lib/x86_64-linux-gnu/cmake
#                cp -r /usr/include/{eigen3,CLI,nlohmann,benchmark} $P/include/
#                cp -r /usr/share/eigen3/cmake $P/share/eigen3/; cp -r /usr/share/cmake/{CLI11,nlohmann_json} $P/share/cmake/
#                cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark $P/lib/x86_64-linux-gnu/cmake/
#                cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so.1.7.1 (also as .so.1debian, .so) and libbenchmark_main.a
#                cp -r /usr/src/googletest .deps/src/; zlib.h, zconf.h, libz.a to .deps/zlib/{include,lib}
#   JOBS       parallel build jobs (default: nproc)
#   EPOCHS     epochs of the training run and of the PyTorch peer (default 3)
#   EAGER_EPOCHS  epochs of the run without CUDA graphs (default 2; 0 skips it)
#   TF32_EPOCHS   epochs of the TF32 runs of fastnn and of the peer (default EPOCHS; 0 skips them)
#   FULL_BUILD=1  build every target (default: only what this script runs)
#   TEST_TIMEOUT, TRAIN_TIMEOUT, BENCH_TIMEOUT, TORCH_TIMEOUT  seconds per step
#                 (defaults 300, 240, 200, 200)
#
# Exit status: 0 when the build, the tests and the training run succeeded and --device auto
# picked the GPU.

set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_DIR MNIST_DIR" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
MNIST=$(cd "$2" && pwd) || { echo "gpu-check: no MNIST directory $2" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build-gpu}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
EPOCHS=${EPOCHS:-3}
DEPS=${DEPS_DIR:-}
if [ -z "$DEPS" ] && [ -d "$ROOT/.deps" ]; then DEPS=$ROOT/.deps; fi
WORK=$BUILD/gpu-check
mkdir -p "$BUILD" "$WORK"
LOG=$OUT/gpu-check.log
: >"$LOG"

log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
run() {  # run TIMEOUT CMD...: output to the log; returns the command's status
  local t=$1
  shift
  echo "\$ $*" >>"$LOG"
  timeout --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
  return "${PIPESTATUS[0]}"
}

ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}  # PyTorch must find its own bundled cuDNN, not ours
export PATH=/usr/local/cuda/bin:$PATH
SECONDS=0

# ---- 1. the machine ---------------------------------------------------------------------------
log "machine"
{
  echo "GPU (name, driver, memory, max SM clock)|$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"
  echo "CUDA compiler|$(nvcc --version 2>&1 | grep -i release | head -1)"
  echo "CMake|$(cmake --version 2>&1 | head -1)"
  echo "C++ compiler|$(${CXX:-c++} --version 2>&1 | head -1)"
  echo "PyTorch|$(python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.is_available())" 2>&1 | tail -1)"
  echo "host|$(uname -srm), $(nproc 2>/dev/null) CPUs"
} | tee "$WORK/machine.txt" | tee -a "$LOG"

# ---- 2. dependencies ---------------------------------------------------------------------------
CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DFASTNN_CUDA=ON -DFASTNN_BUILD_TESTS=ON -DFASTNN_BUILD_EXAMPLES=ON
  -DFASTNN_BUILD_BENCHMARKS=ON -DFASTNN_BUILD_FUZZERS=OFF
  -DFASTNN_TEST_UNITY=OFF)  # one program per test source: more parallel compiles for a many-core machine
if command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD/CMakeCache.txt" ]; then
  CMAKE_ARGS+=(-G Ninja)  # builds the targets below in parallel with each other
fi
PREFIXES=()
if [ -n "$DEPS" ]; then
  log "offline dependencies from $DEPS"
  if [ -d "$DEPS/src/googletest" ]; then
    if [ ! -f "$WORK/gtest-prefix/include/gtest/gtest.h" ]; then
      run 300 cmake -S "$DEPS/src/googletest" -B "$WORK/gtest-build" -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
        -DCMAKE_INSTALL_PREFIX="$WORK/gtest-prefix" -DCMAKE_POSITION_INDEPENDENT_CODE=ON >/dev/null &&
        run 300 cmake --build "$WORK/gtest-build" -j "$JOBS" >/dev/null &&
        run 120 cmake --install "$WORK/gtest-build" >/dev/null || log "WARNING: building GoogleTest failed"
    fi
    PREFIXES+=("$WORK/gtest-prefix")
  fi
  [ -d "$DEPS/prefix" ] && PREFIXES+=("$DEPS/prefix")
  if [ ! -f /usr/include/zlib.h ] && [ -d "$DEPS/zlib" ]; then
    CMAKE_ARGS+=(-DZLIB_INCLUDE_DIR="$DEPS/zlib/include" -DZLIB_LIBRARY="$DEPS/zlib/lib/libz.a")
  fi
  export LD_LIBRARY_PATH="$DEPS/prefix/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ ${#PREFIXES[@]} -gt 0 ]; then
  CMAKE_ARGS+=(-DCMAKE_PREFIX_PATH="$(IFS=';'; echo "${PREFIXES[*]}")")
fi

# cuDNN: the CMake module searches CUDNN_ROOT, the toolkit and NVIDIA's pip wheel; help it where
# cuDNN sits elsewhere (e.g. a wheel of another Python).
if [ -z "${CUDNN_ROOT:-}" ] && [ ! -f /usr/local/cuda/include/cudnn.h ] && [ ! -f /usr/include/cudnn.h ] &&
  ! python3 -c "import nvidia.cudnn" 2>/dev/null; then
  lib=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libcudnn.so.9' -print 2>/dev/null | head -1)
  inc=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'cudnn.h' -print 2>/dev/null | head -1)
  [ -n "$lib" ] && CMAKE_ARGS+=(-DCUDNN_LIBRARY="$lib")
  [ -n "$inc" ] && CMAKE_ARGS+=(-DCUDNN_INCLUDE_DIR="$(dirname "$inc")")
fi
CUDNN_WHEEL_LIBDIR=$(python3 -c "import nvidia.cudnn as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null || true)
if [ -n "$CUDNN_WHEEL_LIBDIR" ] && [ -d "$CUDNN_WHEEL_LIBDIR" ] && [ ! -f "$(dirname "$CUDNN_WHEEL_LIBDIR")/include/cudnn.h" ] &&
  [ ! -f /usr/local/cuda/include/cudnn.h ] && [ ! -f /usr/include/cudnn.h ] && [ ! -f /usr/include/x86_64-linux-gnu/cudnn.h ] &&
  [ -n "$DEPS" ] && [ -d "$DEPS/cudnn/include" ]; then
  # a wheel without headers: compile against the carried cuDNN 9 headers, link the wheel's library
  CMAKE_ARGS+=(-DCUDNN_INCLUDE_DIR="$DEPS/cudnn/include" -DCUDNN_LIBRARY="$CUDNN_WHEEL_LIBDIR/libcudnn.so.9")
fi

# ---- 3. configure and build ---------------------------------------------------------------------
log "configure"
run 300 cmake -S "$ROOT" -B "$BUILD" "${CMAKE_ARGS[@]}"
CONFIGURE_RC=$?
BUILD_RC=1
if [ $CONFIGURE_RC -eq 0 ]; then
  log "build (-j $JOBS)"
  if [ "${FULL_BUILD:-0}" = 1 ]; then
    run 900 cmake --build "$BUILD" -j "$JOBS"
    BUILD_RC=$?
  else
    TARGETS=(mnist_bilstm bench_gpu probe_rnn_algos fastnn_cuda_tests)
    run 900 cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
    BUILD_RC=$?
  fi
fi
log "configure rc=$CONFIGURE_RC build rc=$BUILD_RC ($SECONDS s so far)"
# cuDNN 9 loads its sub-libraries (libcudnn_adv.so.9, ...) at run time: they must come from the
# same directory as the libcudnn.so CMake chose, or cuDNN reports SUBLIBRARY_VERSION_MISMATCH.
CUDNN_LIB=$(grep -E '^CUDNN_LIBRARY:' "$BUILD/CMakeCache.txt" 2>/dev/null | cut -d= -f2-)
if [ -n "$CUDNN_LIB" ]; then
  CUDNN_LIB=$(readlink -f "$CUDNN_LIB")
  export LD_LIBRARY_PATH="$(dirname "$CUDNN_LIB")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "cuDNN: $CUDNN_LIB"
fi
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64"

# ---- 4. CUDA tests ---------------------------------------------------------------------------
TEST_RC=1
if [ $BUILD_RC -eq 0 ]; then
  log "CUDA tests (ctest -L cuda)"
  run "${TEST_TIMEOUT:-300}" ctest --test-dir "$BUILD" -L cuda -j 8 --output-on-failure --timeout 90 |
    tee "$WORK/ctest.txt" >/dev/null
  TEST_RC=${PIPESTATUS[0]}
fi

# ---- 5. training: mnist_bilstm --device cuda ---------------------------------------------------------
TRAIN_RC=1
if [ -x "$BUILD/examples/mnist_bilstm" ]; then
  log "mnist_bilstm --device cuda --epochs $EPOCHS"
  run "${TRAIN_TIMEOUT:-240}" "$BUILD/examples/mnist_bilstm" --device cuda --epochs "$EPOCHS" --data "$MNIST" \
    --history-csv "$OUT/fastnn-history.csv" --verbose 2 | tee "$WORK/train.txt" >/dev/null
  TRAIN_RC=${PIPESTATUS[0]}
else
  log "examples/mnist_bilstm was not built"
fi

# The same run without CUDA graphs (FASTNN_CUDA_GRAPH=0): the eager baseline on this GPU.
EAGER_RC=1
if [ -x "$BUILD/examples/mnist_bilstm" ] && [ "${EAGER_EPOCHS:-2}" -gt 0 ]; then
  log "mnist_bilstm --device cuda --epochs ${EAGER_EPOCHS:-2} with FASTNN_CUDA_GRAPH=0"
  run "${TRAIN_TIMEOUT:-240}" env FASTNN_CUDA_GRAPH=0 "$BUILD/examples/mnist_bilstm" --device cuda \
    --epochs "${EAGER_EPOCHS:-2}" --data "$MNIST" --history-csv "$OUT/fastnn-eager-history.csv" --verbose 2 |
    tee "$WORK/train-eager.txt" >/dev/null
  EAGER_RC=${PIPESTATUS[0]}
fi

# --device auto on a GPU machine must pick the GPU and say so (0 epochs: builds the model, validates).
AUTO_RC=1
if [ -x "$BUILD/examples/mnist_bilstm" ]; then
  log "mnist_bilstm --device auto --epochs 0"
  run 120 "$BUILD/examples/mnist_bilstm" --device auto --epochs 0 --data "$MNIST" --verbose 2 |
    tee "$WORK/auto.txt" >/dev/null
  AUTO_RC=${PIPESTATUS[0]}
  grep -q "^--device auto: using the GPU" "$WORK/auto.txt" || AUTO_RC=1
fi

# The same with TF32 allowed (--tf32): opt-in, reported beside the default.
TF32_EPOCHS=${TF32_EPOCHS:-$EPOCHS}
if [ -x "$BUILD/examples/mnist_bilstm" ] && [ "$TF32_EPOCHS" -gt 0 ]; then
  log "mnist_bilstm --device cuda --tf32 --epochs $TF32_EPOCHS"
  run "${TRAIN_TIMEOUT:-240}" "$BUILD/examples/mnist_bilstm" --device cuda --tf32 --epochs "$TF32_EPOCHS" \
    --data "$MNIST" --history-csv "$OUT/fastnn-tf32-history.csv" --verbose 2 | tee "$WORK/train-tf32.txt" >/dev/null
fi

# ---- 6. GPU benchmark --------------------------------------------------------------------------
if [ -x "$BUILD/bench/gpu/probe_rnn_algos" ]; then
  log "cuDNN RNN algorithms for the reference LSTM (probe_rnn_algos)"
  run 120 "$BUILD/bench/gpu/probe_rnn_algos" | tee "$WORK/probe.txt" >/dev/null
fi
BENCH_RC=1
if [ -x "$BUILD/bench/gpu/bench_gpu" ]; then
  log "bench_gpu"
  run "${BENCH_TIMEOUT:-200}" env FASTNN_MNIST_DIR="$MNIST" "$BUILD/bench/gpu/bench_gpu" \
    --benchmark_out="$OUT/bench_gpu.json" --benchmark_out_format=json
  BENCH_RC=$?
else
  log "bench/gpu/bench_gpu was not built"
fi

# ---- 7. PyTorch cuDNN peer ---------------------------------------------------------------------------
TORCH_RC=1
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  log "PyTorch peer (bench/gpu/torch_peer.py)"
  run "${TORCH_TIMEOUT:-200}" env PYTHONUNBUFFERED=1 LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" python3 "$ROOT/bench/gpu/torch_peer.py" --data "$MNIST" \
    --epochs "$EPOCHS" --history-csv "$OUT/torch-history.csv" | tee "$WORK/torch.txt" >/dev/null
  TORCH_RC=${PIPESTATUS[0]}
  if [ "$TF32_EPOCHS" -gt 0 ]; then
    log "PyTorch peer with --tf32"
    run "${TORCH_TIMEOUT:-200}" env PYTHONUNBUFFERED=1 LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" python3 "$ROOT/bench/gpu/torch_peer.py" \
      --data "$MNIST" --epochs "$TF32_EPOCHS" --tf32 --history-csv "$OUT/torch-tf32-history.csv" |
      tee "$WORK/torch-tf32.txt" >/dev/null
  fi
else
  log "python3 has no PyTorch with CUDA: no peer run"
fi
log "done in $SECONDS s: configure $CONFIGURE_RC, build $BUILD_RC, tests $TEST_RC, train $TRAIN_RC, auto $AUTO_RC, bench $BENCH_RC, torch $TORCH_RC"

# ---- 8. results file ---------------------------------------------------------------------------------
python3 - "$OUT" "$WORK" "$CONFIGURE_RC" "$BUILD_RC" "$TEST_RC" "$TRAIN_RC" "$AUTO_RC" "$BENCH_RC" "$TORCH_RC" <<'PY'
import csv, datetime, json, os, re, sys
out, work = sys.argv[1], sys.argv[2]
rc = dict(zip(["configure", "build", "tests", "train", "device auto picks the GPU", "bench", "torch"], map(int, sys.argv[3:10])))

def read(p):
    try:
        with open(p, errors="replace") as f:
            return f.read()
    except OSError:
        return ""

def history(p):
    try:
        with open(p) as f:
            return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, ValueError):
        return []

machine = read(os.path.join(work, "machine.txt")).strip().splitlines()
ctest = read(os.path.join(work, "ctest.txt"))
train = read(os.path.join(work, "train.txt"))
torch_log = read(os.path.join(work, "torch.txt"))
fh = history(os.path.join(out, "fastnn-history.csv"))
eh = history(os.path.join(out, "fastnn-eager-history.csv"))
th = history(os.path.join(out, "torch-history.csv"))
L = []
L.append("# fastnn on the GPU: gpu-check results\n")
L.append(f"Written by `scripts/gpu-check.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Every number below "
         "was measured in that run.\n")
L.append("## Machine\n")
L.append("| what | value |\n| --- | --- |")
for line in machine:
    k, _, v = line.partition("|")
    L.append(f"| {k.strip()} | {v.strip()} |")
dev = re.search(r"^device: (.*)$", read(os.path.join(out, "gpu-check.log")), re.M)
if dev:
    L.append(f"| fastnn's view (cuda::device_description) | {dev.group(1)} |")
algo = sorted(set(re.findall(r"cuDNN LSTM F=\d+ H=\d+ dirs=\d algorithm ([a-z_]+( bias [a-z_]+)?)", read(os.path.join(out, "gpu-check.log")))))
algo = [a[0] for a in algo]
if algo:
    L.append(f"| cuDNN RNN algorithms used | {', '.join(algo)} |")
L.append("")
L.append("## Steps\n")
L.append("| step | exit status |\n| --- | --- |")
for k, v in rc.items():
    L.append(f"| {k} | {v} |")
L.append("")
L.append("## CUDA tests (ctest -L cuda)\n")
m = re.search(r"\d+% tests passed(, \d+ tests? failed)? out of \d+", ctest)
L.append(m.group(0) if m else "no ctest summary (see gpu-check.log)")
skipped = len(re.findall(r"\*\*\*Skipped", ctest))
if m:
    L.append(f"\n{skipped} of them skipped." if skipped else "\nNone skipped.")
failed_part = ctest.split("The following tests FAILED:")[1] if "The following tests FAILED:" in ctest else ""
failed = re.findall(r"^\s+\d+ - (.+?) \(", failed_part, re.M)
if failed:
    L.append("\nFailed: " + ", ".join(failed))
L.append("")
L.append("## mnist_bilstm --device cuda\n")
if fh:
    L.append("| epoch | train s | eval s | loss | accuracy | val_loss | val_accuracy |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in fh:
        L.append(f"| {int(r['epoch'])} | {r['train_seconds']:.3f} | {r['eval_seconds']:.3f} | {r['loss']:.4f} | "
                 f"{r['accuracy']:.4f} | {r['val_loss']:.4f} | {r['val_accuracy']:.4f} |")
    checks = []
    if len(fh) >= 1:
        checks.append(f"val_accuracy after epoch 1 = {fh[0]['val_accuracy']:.4f} (target >= 0.965: "
                      f"{'met' if fh[0]['val_accuracy'] >= 0.965 else 'NOT met'})")
    if len(fh) >= 3:
        checks.append(f"val_accuracy after epoch 3 = {fh[2]['val_accuracy']:.4f} (target >= 0.98: "
                      f"{'met' if fh[2]['val_accuracy'] >= 0.98 else 'NOT met'})")
    steady = fh[1:] if len(fh) > 1 else fh
    best = min(r["train_seconds"] for r in steady)
    mean = sum(r["train_seconds"] for r in steady) / len(steady)
    checks.append(f"training time per epoch (epochs {'2' if len(fh) > 1 else '1'}..{len(fh)}): mean {mean:.3f} s, "
                  f"best {best:.3f} s (target <= 0.25 s on an H100: {'met' if mean <= 0.25 else 'NOT met'})")
    L.append("")
    L.extend("- " + c for c in checks)
else:
    L.append("no history (the run failed; see gpu-check.log)")
L.append("")
if eh:
    L.append("### The same without CUDA graphs (FASTNN_CUDA_GRAPH=0), same GPU, same run\n")
    L.append("| epoch | train s | eval s | loss | accuracy | val_loss | val_accuracy |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in eh:
        L.append(f"| {int(r['epoch'])} | {r['train_seconds']:.3f} | {r['eval_seconds']:.3f} | {r['loss']:.4f} | "
                 f"{r['accuracy']:.4f} | {r['val_loss']:.4f} | {r['val_accuracy']:.4f} |")
    if fh and len(eh) > 1 and len(fh) > 1:
        n = min(len(eh), len(fh))
        ea = sum(r["train_seconds"] for r in eh[1:n]) / (n - 1)
        ga = sum(r["train_seconds"] for r in fh[1:n]) / (n - 1)
        L.append(f"\nEpochs 2..{n}: eager {ea:.3f} s, with CUDA graphs {ga:.3f} s per epoch ({ea / ga:.2f}x).")
    L.append("")
ft = history(os.path.join(out, "fastnn-tf32-history.csv"))
tt = history(os.path.join(out, "torch-tf32-history.csv"))
if ft or tt:
    L.append("## Opt-in TF32 (mnist_bilstm --tf32, torch_peer.py --tf32), same GPU, same run\n")
    L.append("TF32 tensor-core math in cuBLAS and cuDNN for both; not the default, and not what the targets above are judged on.\n")
    L.append("| epoch | fastnn train s | fastnn val_accuracy | PyTorch train s | PyTorch val_accuracy | PyTorch / fastnn |\n"
             "| --- | --- | --- | --- | --- | --- |")
    for i in range(max(len(ft), len(tt))):
        a = ft[i] if i < len(ft) else None
        b = tt[i] if i < len(tt) else None
        ratio = f"{b['train_seconds'] / a['train_seconds']:.2f}x" if a and b else ""
        L.append(f"| {i + 1} | {a['train_seconds']:.3f} | {a['val_accuracy']:.4f} | " if a else f"| {i + 1} | | | ")
        L[-1] += (f"{b['train_seconds']:.3f} | {b['val_accuracy']:.4f} | {ratio} |" if b else "| | |")
    if len(ft) > 1:
        fa = sum(r["train_seconds"] for r in ft[1:]) / (len(ft) - 1)
        L.append(f"\nfastnn with TF32, epochs 2..{len(ft)}: mean {fa:.3f} s per training epoch.")
    L.append("")
L.append("## PyTorch cuDNN peer (bench/gpu/torch_peer.py)\n")
cfg = re.search(r"^CONFIG (.*)$", torch_log, re.M)
if cfg:
    L.append(f"`{cfg.group(1)}`\n")
if th:
    L.append("| epoch | train s | eval s | loss | accuracy | val_loss | val_accuracy |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in th:
        L.append(f"| {int(r['epoch'])} | {r['train_seconds']:.3f} | {r['eval_seconds']:.3f} | {r['loss']:.4f} | "
                 f"{r['accuracy']:.4f} | {r['val_loss']:.4f} | {r['val_accuracy']:.4f} |")
    if fh:
        L.append("\n| epoch | fastnn train s | PyTorch train s | PyTorch / fastnn |\n| --- | --- | --- | --- |")
        for a, b in zip(fh, th):
            L.append(f"| {int(a['epoch'])} | {a['train_seconds']:.3f} | {b['train_seconds']:.3f} | "
                     f"{b['train_seconds'] / a['train_seconds']:.2f}x |")
        n = min(len(fh), len(th))
        if n > 1:
            fa = sum(r["train_seconds"] for r in fh[1:n]) / (n - 1)
            ta = sum(r["train_seconds"] for r in th[1:n]) / (n - 1)
            L.append(f"\nSteady state (epochs 2..{n}): fastnn {fa:.3f} s, PyTorch {ta:.3f} s per epoch: fastnn is "
                     f"{ta / fa:.2f}x {'faster' if ta >= fa else 'slower (ratio < 1)'} (target >= 3x: "
                     f"{'met' if ta / fa >= 3 else 'NOT met'}).")
else:
    L.append("no PyTorch run (no torch with CUDA, or it failed; see gpu-check.log)")
L.append("")
probe = re.findall(r"^PROBE (.*)$", read(os.path.join(work, "probe.txt")), re.M)
if probe:
    L.append("## cuDNN RNN algorithms for the reference LSTM (bench/gpu/probe_rnn_algos)\n")
    L.append("```")
    L.extend(probe)
    L.append("```\n")
L.append("## bench_gpu (Google Benchmark)\n")
try:
    with open(os.path.join(out, "bench_gpu.json")) as f:
        bj = json.load(f)
    L.append("| benchmark | real time | unit | samples/s | s/step |\n| --- | --- | --- | --- | --- |")
    for b in bj.get("benchmarks", []):
        sps = b.get("samples/s")
        sst = b.get("s/step")
        L.append(f"| {b['name']} | {b['real_time']:.3f} | {b.get('time_unit', '')} | "
                 f"{'' if sps is None else f'{sps:,.0f}'} | {'' if sst is None else f'{sst * 1e3:.3f} ms'} |")
except (OSError, ValueError) as e:
    L.append(f"no benchmark results ({e})")
L.append("")
with open(os.path.join(out, "gpu-results.md"), "w") as f:
    f.write("\n".join(L) + "\n")
print("\n".join(L))
PY

[ $CONFIGURE_RC -eq 0 ] && [ $BUILD_RC -eq 0 ] && [ $TEST_RC -eq 0 ] && [ $TRAIN_RC -eq 0 ] && [ $AUTO_RC -eq 0 ]
