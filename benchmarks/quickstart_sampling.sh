#!/usr/bin/env bash
# The quickstart preset with uniform sampling (its default) and with sandwich sampling (the 2-2
# in every update), side by side, one thread each, every update trained (no time budget); then
# both families scored on the validation split (beam 5).
#
#   benchmarks/quickstart_sampling.sh DATA WORK
#
# DATA  a Multi30k data directory made by `aiokd prepare multi30k`
# WORK  where the runs go: WORK/uniform and WORK/sandwich, each with its results-valid.json
set -u
data=$1 work=$2
mkdir -p "$work"
for sampling in uniform sandwich; do
    sandwich=false; [ "$sampling" = sandwich ] && sandwich=true
    ( OMP_NUM_THREADS=1 aiokd train --data "$data" --preset quickstart --out "$work/$sampling" \
          --max-minutes 0 train.threads=1 distill.sandwich=$sandwich \
          > "$work/train-$sampling.log" 2>&1 &&
      OMP_NUM_THREADS=1 aiokd evaluate --model "$work/$sampling" --data "$data" --split valid \
          --no-latency --threads 1 --out "$work/$sampling/results-valid.json" \
          > "$work/evaluate-$sampling.log" 2>&1 ) &
done
wait
tail -n 8 "$work"/train-*.log
