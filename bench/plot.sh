#!/usr/bin/env bash
# bench/plot.sh: the PNG plots of bench/results (gnuplot, Debian gnuplot-nox).
#
#   bench/plot.sh                       # both plots, from the newest inputs in bench/results
#   bench/plot.sh compare [CSV [PNG]]   # epoch time fastnn vs PyTorch per round, from a
#                                       # bench/compare CSV (default: newest cpu-compare-*.csv)
#                                       # -> bench/results/cpu-epoch-time.png
#   bench/plot.sh curves [HISTORY [PNG [KERAS]]]
#                                       # val_accuracy and loss per epoch of a fastnn history CSV
#                                       # (default bench/results/mnist-30-epochs-cpu.csv) next to the
#                                       # Keras CPU reference (bench/results/keras-reference.csv)
#                                       # -> bench/results/mnist-30-epochs.png
#   bench/plot.sh curves-seeds [-o PNG] [--keras CSV] [MD-or-CSV-glob...]
#                                       # val_accuracy per epoch of every seed run (f32 solid, bf16
#                                       # dashed, one colour per seed) next to the Keras reference,
#                                       # from a bench/accuracy-seeds summary (mnist-seeds-<stamp>.md:
#                                       # the CSVs it lists, next to it) or history CSVs / quoted globs
#                                       # (default: the newest bench/results/mnist-seeds-*.md, else
#                                       # bench/results/mnist-*-epochs-*-seed*.csv)
#                                       # -> bench/results/mnist-30-epochs-seeds.png

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RES="$ROOT/bench/results"

die() { echo "plot.sh: error: $*" >&2; exit 1; }
command -v gnuplot >/dev/null || die "gnuplot not found (apt-get install gnuplot-nox)"

# pngcairo draws anti-aliased text; the libgd png terminal is the fallback.
terminal() {
  local w=$1 h=$2
  if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
    echo "set terminal pngcairo noenhanced size $w,$h font 'Sans,11'"
  else
    echo "set terminal png size $w,$h noenhanced"
  fi
}

plot_compare() {
  local csv=${1:-} png=${2:-$RES/cpu-epoch-time.png}
  if [[ -z "$csv" ]]; then
    csv=$(ls -1 "$RES"/cpu-compare-*.csv 2>/dev/null | sort | tail -1 || true)
    [[ -n "$csv" ]] || die "no bench/results/cpu-compare-*.csv; run bench/compare first"
  fi
  [[ -s "$csv" ]] || die "$csv is missing or empty"
  local dat; dat=$(mktemp "${TMPDIR:-/tmp}/plot-compare.XXXX")
  # per round: mean per-epoch train and eval seconds of each implementation, then a median row
  awk -F, 'NR > 1 { k = $2 SUBSEP $3; tr[k] += $7; ev[k] += $8; n[k]++; if ($2 > R) R = $2
                    thr[$3] = $4; tl = $5 }
    function med(a, m,   i, j, t) {
      for (i = 1; i <= m; ++i) for (j = i + 1; j <= m; ++j) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
    END {
      printf "# label fastnn_train pytorch_train fastnn_eval pytorch_eval\n"
      for (r = 1; r <= R; ++r) {
        f = r SUBSEP "fastnn"; p = r SUBSEP "pytorch"
        F[r] = tr[f] / n[f]; P[r] = tr[p] / n[p]; FE[r] = ev[f] / n[f]; PE[r] = ev[p] / n[p]; S[r] = P[r] / F[r]
        printf "\"round %d\" %.4f %.4f %.4f %.4f\n", r, F[r], P[r], FE[r], PE[r]
      }
      mf = med(F, R); mp = med(P, R); mfe = med(FE, R); mpe = med(PE, R); ms = med(S, R)
      printf "\"median\" %.4f %.4f %.4f %.4f\n", mf, mp, mfe, mpe
      printf "# speedup %.2f threads_fastnn %s threads_pytorch %s train_limit %s\n", ms, thr["fastnn"], thr["pytorch"], tl
    }' "$csv" >"$dat"
  local speedup thr_f thr_p tl
  read -r _ _ speedup _ thr_f _ thr_p _ tl < <(grep '^# speedup' "$dat")
  [[ "$tl" == 0 ]] && tl=60000
  gnuplot <<EOF
$(terminal 900 560)
set output '$png'
set title "Training time per epoch, $tl MNIST samples (batch 128), fastnn $thr_f thread(s) vs PyTorch $thr_p thread(s)\nmedian speed-up (PyTorch / fastnn): ${speedup}x" font ',12'
set ylabel 'seconds per epoch (training only; lower is better)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0
plot '$dat' using 2:xtic(1) title 'fastnn (mnist_bilstm)' lc rgb '#1f77b4', \
     '' using 3 title 'PyTorch 1.13 (bench/torch_peer.py)' lc rgb '#d62728', \
     '' using (\$0 - 0.15):2:(sprintf(\$2 < 10 ? '%.2f s' : '%.1f s', \$2)) with labels offset 0,0.7 notitle, \
     '' using (\$0 + 0.15):3:(sprintf(\$3 < 10 ? '%.2f s' : '%.1f s', \$3)) with labels offset 0,0.7 notitle
EOF
  rm -f "$dat"
  echo "plot.sh: wrote $png (from $csv)"
}

plot_curves() {
  local hist=${1:-$RES/mnist-30-epochs-cpu.csv} png=${2:-$RES/mnist-30-epochs.png} keras=${3:-$RES/keras-reference.csv}
  [[ -s "$hist" ]] || die "$hist is missing; train with: build/examples/mnist_bilstm --epochs 30 --verbose 2 --history-csv $hist"
  [[ -s "$keras" ]] || die "$keras is missing"
  local n final
  n=$(awk -F, 'NR > 1' "$hist" | wc -l)
  final=$(awk -F, 'NR > 1 { v = $5 } END { printf "%.4f", v }' "$hist")
  local kfinal; kfinal=$(awk -F, 'NR > 1 { v = $5 } END { printf "%.4f", v }' "$keras")
  # accuracy axis: from 0.96 (or lower, to the lowest value of either run) to 1
  local ymin ytic
  ymin=$(awk -F, 'FNR > 1 && $5 != "" && $5 + 0 < m { m = $5 + 0 } END { printf "%.2f", (m < 0.96 ? int(m * 100) / 100 : 0.96) }' m=0.96 "$hist" "$keras")
  ytic=$(awk -v y="$ymin" 'BEGIN { print (y >= 0.95 ? 0.005 : (y >= 0.8 ? 0.02 : 0.1)) }')
  gnuplot <<EOF
$(terminal 1200 520)
set output '$png'
set datafile separator ','
set key autotitle columnhead
set multiplot layout 1,2 title "Bidirectional(LSTM(128)) on MNIST: fastnn ($n epochs, final val_acc $final) vs Keras CPU reference (final $kfinal)" font ',12'
set xlabel 'epoch'
set grid
set key bottom right
set ylabel 'validation accuracy'
set yrange [$ymin:1.0]
set ytics $ytic
set format y '%.3f'
plot '$hist' using 1:5 with linespoints lw 2 pt 7 ps 0.6 lc rgb '#1f77b4' title 'fastnn val_accuracy', \
     '$keras' using 1:5 with linespoints lw 2 pt 5 ps 0.6 lc rgb '#ff7f0e' title 'Keras CPU val_acc', \
     0.99 with lines dt 2 lc rgb '#555555' title 'target 0.990'
set key top right
set ylabel 'loss (log scale)'
set logscale y
set yrange [*:*]
set ytics auto
set format y '1e%T'
plot '$hist' using 1:2 with linespoints lw 2 pt 7 ps 0.6 lc rgb '#1f77b4' title 'fastnn loss', \
     '$hist' using 1:4 with linespoints lw 2 dt 2 pt 6 ps 0.6 lc rgb '#1f77b4' title 'fastnn val_loss', \
     '$keras' using 1:2 with linespoints lw 2 pt 5 ps 0.6 lc rgb '#ff7f0e' title 'Keras loss', \
     '$keras' using 1:4 with linespoints lw 2 dt 2 pt 4 ps 0.6 lc rgb '#ff7f0e' title 'Keras val_loss'
unset multiplot
EOF
  echo "plot.sh: wrote $png (from $hist and $keras)"
}

# The history CSVs the arguments name, one per line: a .md names the mnist-*-epochs-*-seed*.csv files
# it mentions (looked up next to it); anything else is a CSV path or a glob (quoted globs are
# expanded here).
seed_csvs() {
  local a f md_dir matched
  for a in "$@"; do
    if [[ $a == *.md ]]; then
      [[ -s "$a" ]] || die "$a is missing or empty"
      md_dir=$(dirname "$a")
      while read -r f; do
        if [[ -s "$md_dir/$f" ]]; then echo "$md_dir/$f"
        else echo "plot.sh: warning: $md_dir/$f (listed in $a) is missing or empty, skipped" >&2; fi
      done < <(grep -o -E 'mnist-[0-9]+-epochs-[A-Za-z0-9_]+-seed[0-9]+\.csv' "$a" | awk '!seen[$0]++')
    else
      matched=0
      while IFS= read -r f; do
        [[ -n $f ]] || continue
        matched=1
        if [[ -s "$f" ]]; then echo "$f"; else echo "plot.sh: warning: $f is empty, skipped" >&2; fi
      done < <(compgen -G "$a" || true)
      (( matched )) || die "no file matches '$a'"
    fi
  done
}

plot_curves_seeds() {
  local png=$RES/mnist-30-epochs-seeds.png keras=$RES/keras-reference.csv args=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -o|--png) [[ -n "${2-}" ]] || die "$1 needs a file name"; png=$2; shift 2 ;;
      --keras) [[ -n "${2-}" ]] || die "$1 needs a file name"; keras=$2; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ -s "$keras" ]] || die "$keras is missing"
  if [[ ${#args[@]} -eq 0 ]]; then
    local md; md=$(ls -1 "$RES"/mnist-seeds-*.md 2>/dev/null | sort | tail -1 || true)
    if [[ -n "$md" ]]; then args=("$md")
    elif compgen -G "$RES/mnist-*-epochs-*-seed*.csv" >/dev/null; then args=("$RES/mnist-*-epochs-*-seed*.csv")
    else die "no bench/results/mnist-seeds-*.md or mnist-*-epochs-*-seed*.csv; run bench/accuracy-seeds first"; fi
  fi
  local csvs=() list
  list=$(seed_csvs "${args[@]}") || exit 1
  [[ -n "$list" ]] && mapfile -t csvs < <(awk '!seen[$0]++' <<<"$list")
  [[ ${#csvs[@]} -gt 0 ]] || die "no history CSVs in ${args[*]}; run bench/accuracy-seeds first"

  # one plot clause per CSV: the precision from the name (f32 solid, bf16 dashed, others dotted),
  # one colour per seed
  local palette=('#1f77b4' '#2ca02c' '#9467bd' '#d62728' '#8c564b' '#e377c2' '#17becf' '#7f7f7f' '#bcbd22')
  local -A colour=()
  local clauses=() f base prec seed dt nseeds=0 precs=""
  for f in "${csvs[@]}"; do
    [[ $f != *"'"* ]] || die "$f: a quote in the file name"
    base=$(basename "$f" .csv)
    if [[ $base =~ -epochs-([A-Za-z0-9_]+)-seed([0-9]+)$ ]]; then
      prec=${BASH_REMATCH[1]}; seed=${BASH_REMATCH[2]}
    else
      prec=f32; seed=$base
    fi
    if [[ -z ${colour[$seed]-} ]]; then
      colour[$seed]=${palette[$(( nseeds % ${#palette[@]} ))]}; nseeds=$(( nseeds + 1 ))
    fi
    case $prec in f32) dt=1 ;; bf16) dt=2 ;; *) dt=3 ;; esac
    [[ " $precs " == *" $prec "* ]] || precs+="${precs:+, }$prec"
    clauses+=("'$f' using 1:5 with linespoints lw 1.5 dt $dt pt 7 ps 0.4 lc rgb '${colour[$seed]}' title '$prec seed $seed'")
  done
  local kfinal kbest kbe
  read -r kfinal kbest kbe < <(awk -F, 'NR > 1 { f = $5; if ($5 + 0 > b + 0) { b = $5; be = $1 } } END { printf "%.4f %.4f %d\n", f, b, be }' "$keras")
  clauses+=("'$keras' using 1:5 with linespoints lw 2.5 pt 5 ps 0.5 lc rgb '#ff7f0e' title 'Keras CPU reference (final $kfinal, best $kbest at epoch $kbe)'")
  clauses+=("0.99 with lines dt 3 lc rgb '#555555' title 'target 0.990'")
  local plot_cmd; plot_cmd=$(printf '%s, ' "${clauses[@]}"); plot_cmd=${plot_cmd%, }
  # accuracy axis: from just below the lowest value of any run (at most 0.97) to 1
  local ymin ytic
  ymin=$(awk -F, 'FNR > 1 && $5 != "" && $5 + 0 < m { m = $5 + 0 } END { y = int((m - 0.002) * 100) / 100; printf "%.2f", (y < 0.97 ? y : 0.97) }' m=1 "${csvs[@]}" "$keras")
  ytic=$(awk -v y="$ymin" 'BEGIN { print (y >= 0.95 ? 0.005 : (y >= 0.8 ? 0.02 : 0.1)) }')
  local styles="precision $precs"
  [[ $precs == *f32* && $precs == *bf16* ]] && styles="f32 solid, bf16 dashed"
  gnuplot <<EOF
$(terminal 1100 620)
set output '$png'
set datafile separator ','
set title "Bidirectional(LSTM(128)) on MNIST: fastnn val_accuracy per epoch, ${#csvs[@]} runs over $nseeds seed(s) ($styles)\nnext to the Keras CPU reference" font ',12'
set xlabel 'epoch'
set ylabel 'validation accuracy'
set grid
set key bottom right opaque box
set yrange [$ymin:1.0]
set ytics $ytic
set format y '%.3f'
set xrange [0.5:*]
plot $plot_cmd
EOF
  echo "plot.sh: wrote $png (from ${#csvs[@]} history CSVs and $keras)"
}

case "${1:-all}" in
  compare) shift; plot_compare "$@" ;;
  curves) shift; plot_curves "$@" ;;
  curves-seeds) shift; plot_curves_seeds "$@" ;;
  all)
    if ls "$RES"/cpu-compare-*.csv >/dev/null 2>&1; then plot_compare; else echo "plot.sh: no cpu-compare-*.csv yet, skipping the comparison plot"; fi
    if [[ -s "$RES/mnist-30-epochs-cpu.csv" ]]; then plot_curves; else echo "plot.sh: no mnist-30-epochs-cpu.csv yet, skipping the curves"; fi
    ;;
  -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown plot '$1' (compare, curves, curves-seeds, or nothing for compare and curves)" ;;
esac
