#!/usr/bin/env bash
# The GPU rows of bench/README.md's speed section in one run (a lent GPU's time is short):
# the CUDA-only tests, then each benchmark in turn, each stopped at its share of a
# deadline; tables to OUT/tables.md, progress and errors to OUT/log.txt, measurements to
# OUT/*.json (at most 8 files come back from a device call: keep to these).
#
#   bench/gpu.sh OUT [DATA_ROOT] [SECONDS] [SUITE]   # DATA_ROOT default ../shared/data
#   DEVICE=cpu bench/gpu.sh /tmp/out "" 60            # a dry run of the script itself
# SUITE: "speed" (default: the speed issue's rows) or "fidelity" (ML-1M [200x100] at paper
# scale, 30 epochs, one distillation seed, SASRec: bench/README.md's quality tables).
set -u
out=${1:?usage: bench/gpu.sh OUT [DATA_ROOT] [SECONDS] [SUITE]}
data=${2:-../shared/data}
deadline=$((SECONDS + ${3:-540}))
suite=${4:-speed}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

# stage NAME CAP_SECONDS COMMAND...: at most CAP seconds, and never past the deadline
stage() {
    local name=$1 cap=$2 left=$((deadline - SECONDS)) began=$SECONDS
    shift 2
    ((left < cap)) && cap=$left
    if ((cap < 20)); then
        echo "== $name: skipped, the deadline is near" >>"$out/tables.md"
        return
    fi
    echo "== $name (at most ${cap} s, started $(date +%T))" | tee -a "$out/tables.md" >>"$out/log.txt"
    timeout "$cap" "$@" >>"$out/tables.md" 2>>"$out/log.txt"
    echo "== $name: exit $? after $((SECONDS - began)) s" >>"$out/tables.md"
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >>"$out/tables.md"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    >>"$out/tables.md" 2>&1
stage cuda-tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
if [[ $suite == fidelity ]]; then
    stage ml-1m-30-epochs 900 python3 bench/reproduce.py --dataset ml-1m --data-root "$data" \
        --device "$device" --cuda-graphs --epochs 30 --distill-seeds 1 --sample-seeds 1 \
        --learners sasrec --json "$out/ml1m-30ep.json"
    cat "$out/tables.md"
    exit
fi
# ML-1M's shape [200x100] (synthetic data): eager and graphed, a profiled step of each
stage ml-1m-shape 80 python3 bench/speed.py --device "$device" --sweep ml-1m-shape --steps 3 \
    --cuda-graphs --profile --json "$out/ml1m-shape.json"
stage engines 75 python3 bench/speed.py --device "$device" --steps 3 --cuda-graphs \
    --json "$out/engines.json"
stage items-large 60 python3 bench/speed.py --device "$device" --sweep items-large --steps 2 \
    --json "$out/items.json"
stage ml-1m 160 python3 bench/speed.py --device "$device" --end-to-end ml-1m --size 200x100 \
    --cuda-graphs --time-limit 150 --data-root "$data" --json "$out/e2e-ml1m.json"
cat "$out/tables.md"
