#!/usr/bin/env bash
# Variants of the quickstart preset side by side, one thread each, every update trained (no time
# budget, unless a variant's ARGS give one); then every family scored on the validation split
# (beam 5).
#
#   benchmarks/quickstart_compare.sh DATA WORK NAME=ARGS [NAME=ARGS ...]
#
# DATA  a Multi30k data directory made by `aiokd prepare multi30k`
# WORK  where the runs go: WORK/NAME for each variant, each with its results-valid.json
# ARGS  what `aiokd train` is given beside the preset, e.g. the two sampling rules at the
#       former split of AIO-KD's stages (1,250 + 1,250) and the two splits:
#         "uniform=--max-updates 1250 train.stage1_updates=0 distill.sandwich=false"
#         "sandwich=--max-updates 1250 train.stage1_updates=0 distill.sandwich=true"
#         "stages-1250-1250=--max-updates 1250 train.stage1_updates=0"   "stages-625-1875="
#       and the same within the preset's time budget: "budget-625-1875=--max-minutes 23" ...
set -u
data=$1 work=$2
shift 2
mkdir -p "$work"
for variant in "$@"; do
    name=${variant%%=*} args=${variant#*=}
    # shellcheck disable=SC2086  # ARGS are words for aiokd train
    ( OMP_NUM_THREADS=1 aiokd train --data "$data" --preset quickstart --out "$work/$name" \
          --max-minutes 0 train.threads=1 $args > "$work/train-$name.log" 2>&1 &&
      OMP_NUM_THREADS=1 aiokd evaluate --model "$work/$name" --data "$data" --split valid \
          --no-latency --threads 1 --out "$work/$name/results-valid.json" \
          > "$work/evaluate-$name.log" 2>&1 ) &
done
wait
tail -n 8 "$work"/train-*.log
