#!/usr/bin/env bash
# The `small` comparison on one GPU, every run in its own driver process side by side: one small
# model leaves a GPU mostly idle, so many train at once (under CUDA MPS when it starts).
#
#   benchmarks/reproduce/one_gpu.sh DATA WORK RESULTS [SECONDS] [EXTRA]
#
# DATA     a Multi30k data directory made by `aiokd prepare multi30k`
# WORK     the drivers' shared work directory (runs, logs, timings)
# RESULTS  where multi30k-small.{json,md} are written
# SECONDS  every driver is stopped after this long (default 540); what finished is kept
# EXTRA    `ablations` to add the AIO-KD ablations to the first wave
# PRESET   (environment) another preset of presets.yaml, e.g. `quick` to try this script
#
# First wave: from-scratch 2-2, 4-2, 6-2, 4-4, 6-6 (seed 1; 2-2 and 6-6 also seed 2), AIO-KD
# (seeds 1 and 2), AIO-KD with separate passes. Second wave, when the from-scratch 6-6 (the
# teacher) is trained: Word-KD 2-2, 4-2, 6-2, 4-4, 6-6 and AIO-KD from the teacher's weights.
set -u
data=$1 work=$2 results=$3 seconds=${4:-540} extra=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work" "$results"
declare -A pids

driver() {  # NAME ARGS...: one driver in the background, its output in WORK/driver-NAME.log
    local name=$1
    shift
    python3 "$here/run.py" --preset "${PRESET:-small}" --data "$data" --name multi30k --out "$work" \
        --results-dir "$results" "$@" >"$work/driver-$name.log" 2>&1 &
    pids[$name]=$!
}

progress() {  # one line: seconds so far, then per run its last update and stage
    python3 - "$work" "$SECONDS" <<'EOF'
import json, sys
from pathlib import Path
line = [f"t={sys.argv[2]}s"]
for log in sorted(Path(sys.argv[1], "runs").glob("*/log.jsonl")):
    rows = [json.loads(text) for text in log.read_text().splitlines() if text.strip()]
    if rows:
        done = (log.parent / "model.safetensors").is_file()
        line.append(f"{log.parent.name}:{rows[-1].get('stage')}/{rows[-1].get('update')}"
                    + ("*" if done else ""))
print(" ".join(line), flush=True)
EOF
}

mps=off
if command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d &&
        timeout 60 python3 -c "import torch; print(torch.ones(2, device='cuda').sum().item())"; then
        mps=on
    else
        echo quit | nvidia-cuda-mps-control 2>/dev/null
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    fi
fi
echo "CUDA MPS: $mps"

driver teacher --systems scratch:6-6
for student in 2-2 4-2 6-2 4-4; do
    driver "scratch-$student" --systems "scratch:$student"
done
driver scratch-2-2-seed2 --systems scratch:2-2 --seeds 2
driver scratch-6-6-seed2 --systems scratch:6-6 --seeds 2
driver aiokd --systems aiokd
driver aiokd-seed2 --systems aiokd --seeds 2
driver aiokd-separate --systems aiokd-separate
if [ "$extra" = ablations ]; then
    for system in aiokd-no-dgd aiokd-no-ml aiokd-one-stage; do
        driver "$system" --systems "$system"
    done
fi

second_wave=pending
last=0
while [ "$SECONDS" -lt "$seconds" ]; do
    running=0
    for name in "${!pids[@]}"; do
        kill -0 "${pids[$name]}" 2>/dev/null && running=$((running + 1))
    done
    if [ "$second_wave" = pending ] && ! kill -0 "${pids[teacher]}" 2>/dev/null; then
        if [ -f "$work/runs/scratch-6-6/model.safetensors" ]; then
            for student in 2-2 4-2 6-2 4-4 6-6; do
                driver "word-kd-$student" --systems "word-kd:$student"
            done
            driver aiokd-init --systems aiokd-init
            second_wave=started
            running=$((running + 6))
        else
            echo "the teacher failed, so every driver is stopped; last lines of its driver:"
            tail -20 "$work/driver-teacher.log"
            break
        fi
    fi
    [ "$running" -eq 0 ] && break
    if [ $((SECONDS - last)) -ge 30 ]; then
        progress
        last=$SECONDS
    fi
    sleep 5
done
progress
pkill -TERM -f "$here/run.py"
pkill -TERM -f -- "-m aiokd "
sleep 3
pkill -KILL -f -- "-m aiokd "
[ "$mps" = on ] && echo quit | nvidia-cuda-mps-control
for log in "$work"/driver-*.log; do
    echo "== $(basename "$log")"
    grep -E "^\[|failed|Error|error" "$log" | tail -4
done
