#!/usr/bin/env bash
# mpirun -np 2 mnist_bilstm --distributed, briefly: exit 0, one "final:" line (rank 0 prints, the
# other rank is silent), a history CSV with one row, written by rank 0.
#   example_distributed.sh MPIEXEC MNIST_BILSTM DATA_DIR
set -u
mpiexec=$1 bin=$2 data=$3
[[ -f $data/train-images-idx3-ubyte || -f $data/train-images-idx3-ubyte.gz ]] || { echo "SKIP: no MNIST in $data"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 FASTNN_DIST_TIMEOUT=120
dir=$(mktemp -d /tmp/fastnn-example-dist-XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$mpiexec" --oversubscribe -np 2 "$bin" --distributed --data "$data" --epochs 1 --train-limit 3200 --verbose 2 \
  --history-csv "$dir/history.csv" >"$dir/out.log" 2>&1
status=$?
cat "$dir/out.log"
[[ $status -eq 0 ]] || { echo "FAIL: exit status $status"; exit 1; }
[[ $(grep -c '^final:' "$dir/out.log") -eq 1 ]] || { echo "FAIL: expected one final: line"; exit 1; }
grep -q 'Data-parallel on 2 ranks (mpi)' "$dir/out.log" || { echo "FAIL: no data-parallel line"; exit 1; }
[[ $(wc -l <"$dir/history.csv") -eq 2 ]] || { echo "FAIL: the history CSV is not a header and one row"; exit 1; }
echo ok
