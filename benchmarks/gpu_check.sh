#!/usr/bin/env bash
# Issue 29 on a lent GPU, in one run: correctness on the device first, then training throughput and MFU
# against transformers, then the data path and peak memory; one table last (benchmarks/gpu_table.py,
# also written to $OUT/table.md). Every step logs to $OUT/NAME.log and has its own timeout; the sum of
# the timeouts is 530 s, and BUDGET caps the run at 330 s (the wheels' install and the table aside),
# which leaves a rerun room in 15 minutes of device time, the machine's start-up included.
#
#   device run, carry [".gpu"]:  OUT=$OUT bash benchmarks/gpu_check.sh
#   dry run on a CPU machine:    GPU_CHECK_DRY_RUN=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh
#
# The dry run keeps every step and command, with the tiny model at seq 128, a few steps and 8x the
# timeouts; only what needs CUDA fails there (nvidia-smi) or is skipped (the host-sync count) or reads
# "-" (MFU, profiled kernel time). Its numbers mean nothing.
#
# The GPU machine has no network and lacks megatron-core, nltk, psutil and defusedxml (../shared/gpu.md).
# Prepare .gpu/ (git-ignored, ~10 MB) on a CPU machine from the repository root, then carry it:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .gpu/whl megatron-core==0.19.2 nltk psutil defusedxml
#   python -c "from ettin_megatron.prep.sample_corpus import build_sample_corpus; build_sample_corpus('/tmp/corpus.jsonl')"
#   python tools/preprocess_data.py --input /tmp/corpus.jsonl --output-prefix .gpu/sample \
#     --tokenizer-model ../shared/tokenizers/modernbert --workers 1      # -> .gpu/sample_text_document
#   python -c "from pathlib import Path; from benchmarks import model_quality; \
#     model_quality.prepare(Path('.gpu/mq').resolve(), None)"          # device_parity's data (tiny tokenizer)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
DRY=${GPU_CHECK_DRY_RUN:-0}
DATA=.gpu/sample_text_document
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
# Unbuffered: a step its timeout ends keeps the lines it printed. One rank without torchrun:
# runtime.initialize defaults the rank variables and picks a free port itself.
export PYTHONUNBUFFERED=1

# Sizes as the issue names them, with Ettin's phase-1 micro-batches (examples/recipes/encoder/*/phase1.yaml),
# so that the throughput runs also give the peak memory of item 4. Each step holds two micro-batches: a
# recipe's 4,608 samples are 64 of the 150m's, and two spread the optimizer's cost as accumulation does
# without minutes per step (tokens/s err low by the optimizer step's extra share).
# Runs are sized in tokens (--train-tokens, as the recipes are), so `document` runs, whose samples hold
# one document each and so fewer tokens, do the same work as `packed` runs instead of ~1/5 of it.
MODEL_17m=17m MODEL_150m=150m MODEL_400m=400m
SEQ=1024 STEPS=10 LOG_INTERVAL=2 SCALE=1
declare -A MICRO=([17m]=144 [150m]=72 [400m]=48)
HF_BATCH=32 HF_STEPS=8 DATA_SECONDS=3
if [ "$DRY" = 1 ]; then
  MODEL_17m=tiny MODEL_150m=tiny MODEL_400m=tiny
  SEQ=128 STEPS=4 SCALE=8 HF_BATCH=2 HF_STEPS=2 DATA_SECONDS=1
  MICRO=([17m]=4 [150m]=4 [400m]=4)
fi

# BUDGET caps the steps' run: a step gets its own timeout or what is left, and is skipped when under 5 s
# are left, so a slow step costs the steps after it, never the rerun's room. ONLY (a regular expression
# of step names) reruns some steps, e.g. ONLY='train-400m.*|ours-400m'.
DEADLINE=$((SECONDS + ${BUDGET:-330} * SCALE))
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $OUT/NAME.log, record the outcome
  local name=$1 limit=$(($2 * SCALE)) start=$SECONDS status left
  shift 2
  [[ $name =~ ^(${ONLY:-.*})$ ]] || return 0
  left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -lt 5 ]; then
    printf '%s\tskipped\t0\t0\n' "$name" >> "$OUT/steps.tsv"
    return 0
  fi
  echo "=== $name (timeout ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  case $? in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" $((SECONDS - start)) "$limit" >> "$OUT/steps.tsv"
  grep -v -i "warn" "$OUT/$name.log" | tail -n 6
}

# What ran: the card and the software (the table's header).
if [ "$DRY" = 1 ]; then  # the wheels are for the GPU machine's Python 3.12; the venv here has its own
  echo "dry run: packages of $(command -v python)"
else
  timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
step gpu 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step versions 15 python -W ignore -c "import platform, torch, transformers, megatron.core as m
print(f'python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), '
      f'transformers {transformers.__version__}, megatron-core {m.__version__}')"

# 1. Correctness: host syncs, attention backends against sdpa, logits against transformers (gpu_check.py);
# then pretrain's step-1 loss here against the CPU's, same seed and batch (device_parity.py).
step correctness 60 python -m benchmarks.gpu_check --size "$MODEL_150m"
step parity-cpu 25 env CUDA_VISIBLE_DEVICES= python -m benchmarks.device_parity --work-dir .gpu/mq \
  --out "$OUT/parity_cpu.json"
step parity-gpu 25 python -m benchmarks.device_parity --work-dir .gpu/mq --out "$OUT/parity_gpu.json" \
  --compare "$OUT/parity_cpu.json"

# 2 and 4. Real training steps (forward, backward, StableAdamW) through pretrain with the Ettin recipe's
# optimizer and precision flags, the default attention backend (flex here, compiled by its first step)
# and the default data workers; its log gives tokens/s, MFU and peak memory. The recipe's batch ramp-up
# starts above these runs' global batch; one that starts at the global batch is none (pretrain says so).
train() {  # train SIZE LAYOUT TIMEOUT
  local size=$1 layout=$2 model="MODEL_$1" micro=${MICRO[$1]}
  step "train-$size-$layout" "$3" python -m ettin_megatron.pretrain \
    --recipe "examples/recipes/encoder/$size/phase1.yaml" --model-size "${!model}" --seq-length "$SEQ" \
    --data-path "$DATA" --split 100,0,0 --data-layout "$layout" --micro-batch-size "$micro" \
    --global-batch-size $((2 * micro)) --rampup-batch-size-tokens $((2 * micro)) $((2 * micro)) 1 \
    --train-tokens $((STEPS * 2 * micro * SEQ)) --log-interval "$LOG_INTERVAL" --eval-iters 0
}
train 150m packed 90  # the first flex compile (inductor's cache serves the later runs)
train 150m document 40
train 400m packed 45
train 400m document 45
# transformers' ModernBertForMaskedLM (+ torch AdamW, BF16 autocast) against our step on the same batches
# of full-length rows (train_cpu.py; one micro-batch of HF_BATCH rows: transformers' logits of every
# position of 72 rows, ~7 GB in BF16 and twice that upcast for its loss, would crowd the card). The HF run also counts its FLOPs with torch's FlopCounterMode, the independent
# count the table checks our MFU's against; ours profiles three more steps (kernel time vs host gaps).
compare() {  # compare IMPL SIZE TIMEOUT [FLAGS]
  local impl=$1 size=$2 model="MODEL_$2" limit=$3
  shift 3
  step "$impl-$size" "$limit" python -m benchmarks.train_cpu --impl "$impl" --size "${!model}" --batch "$HF_BATCH" \
    --seq-length "$SEQ" --steps "$HF_STEPS" --warmup 2 --bf16 "$@"
}
compare hf 150m 30
compare ours 150m 35 --optimizer stableadamw --profile "$OUT/profile-150m.txt"

# 3. The data path: the training step rate at 17m (the fastest step) and 150m against the tokens/s that
# the loader's default two workers deliver (data_pipeline.py, Ettin's 17m micro-batch of 144 x 1024).
for layout in packed document; do train 17m $layout 30; done
step data-pipeline 20 python -m benchmarks.data_pipeline --data-path "$DATA" --seq-lengths "$SEQ" --workers 2 \
  --steps 0 --seconds "$DATA_SECONDS"

# Where the 400m step's time goes, for the MFU goal (last: the least needed).
compare ours 400m 30 --optimizer stableadamw --profile "$OUT/profile-400m.txt"

# The table, last (its log: $OUT/table.log).
timeout 60 python -m benchmarks.gpu_table "$OUT" > "$OUT/table.log" 2>&1
cat "$OUT/table.md" 2> /dev/null || tail -n 20 "$OUT/table.log"
