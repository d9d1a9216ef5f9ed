#!/usr/bin/env bash
# The model-quality comparison (benchmarks/model_quality.py) with many training seeds, on a
# GPU machine: JOBS training runs side by side, every one on the one GPU. The tiny model leaves the
# GPU idle, so the seeds a CPU measures in hours fit in minutes here. Measured on one H200 with 12-18
# runs at once (2026-12-04): a pretrain run of ~1,070-1,100 steps takes 240-275 s with its export and
# evaluation, a transformers reference run 66-69 s. The defaults (6 seeds x 2 objectives x 3 runs,
# 16 at a time) are ~440 s of work at that pace, about LIMIT: whole seeds come first.
#
# Prepared on a CPU machine (the GPU machine has no megatron-core / nltk and no network):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl megatron-core==0.19.2 nltk defusedxml
#   python -c "from pathlib import Path; from benchmarks import model_quality; \
#     model_quality.prepare(Path('runs/mq_gpu').resolve(), None)"
# and run with both carried: device run, carry [".whl", "runs/mq_gpu"], `bash benchmarks/gpu_model_quality.sh`.
# A smoke test (4 steps' worth of tokens) runs first, so a failure costs seconds; then the measurement
# until LIMIT seconds, whose finished seeds are kept (rows_*.json) and tabled.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out} WORK=${WORK:-runs/mq_gpu} JOBS=${JOBS:-16} LIMIT=${LIMIT:-450} SEEDS=${SEEDS:-21 22 23 24 25 26}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# Does the GPU compute pretrain's first step as the CPU does? (benchmarks/device_parity.py: on
# 2026-12-04 step 1 read 8.315 here and 8.361 on a CPU for the same weights and batch.)
CUDA_VISIBLE_DEVICES= python -m benchmarks.device_parity --work-dir "$WORK" --out "$WORK/parity_cpu.json" > "$OUT/parity.log" 2>&1
python -m benchmarks.device_parity --work-dir "$WORK" --out "$WORK/parity_gpu.json" --compare "$WORK/parity_cpu.json" \
  >> "$OUT/parity.log" 2>&1
grep -v -i warn "$OUT/parity.log" | tail -n 12

measure() {  # measure LOG SECONDS ARGS...: model_quality.py on the GPU, log to $OUT/LOG
  local log=$1 limit=$2; shift 2
  timeout "$limit" python -m benchmarks.model_quality --work-dir "$WORK" --attention-backend sdpa "$@" > "$OUT/$log" 2>&1
}
if ! measure quick.log 120 --quick --jobs 2 --seeds 21 --objectives mlm --runs document transformers; then
  tail -n 40 "$OUT/quick.log"; tail -n 40 "$WORK"/job_*.log "$WORK"/*_s21.log; exit 1
fi
tail -n 8 "$OUT/quick.log"
measure model_quality.log "$LIMIT" --jobs "$JOBS" --runs document packed transformers --seeds $SEEDS
echo "measurement exit $? after $SECONDS s"
python -m benchmarks.model_quality --table "$WORK"/rows_*.json | tee "$OUT/table.md"
python -m benchmarks.model_quality --work-dir "$WORK" --curves --seeds $SEEDS --runs document packed | tee "$OUT/curves.md"
python3 -c "import json, sys; json.dump([r for f in sorted(sys.argv[1:]) for r in json.load(open(f))], \
  open('$OUT/rows.json', 'w'), indent=1)" "$WORK"/rows_*.json
tar czf "$OUT/logs.tgz" "$WORK"/*.log "$WORK"/parity_*.json
