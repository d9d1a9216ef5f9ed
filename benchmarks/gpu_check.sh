#!/usr/bin/env bash
# The GPU checks of ../shared/gpu.md in one run: correctness on the device first (benchmarks/gpu_check.py,
# the attention and RoPE tests on CUDA), then timings (model throughput against transformers, a real
# training run's tokens/s and MFU, the data pipeline on the host's cores). Writes logs to $OUT (or ./gpu-out).
#
# Prepared on a CPU machine: wheels for what the GPU machine lacks (megatron-core, nltk, psutil) and the
# sample corpus tokenized with the ModernBERT tokenizer, both under .gpu/ (see ../shared/gpu.md):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl megatron-core==0.19.2 nltk psutil
#   python tools/preprocess_data.py --input corpus.jsonl --output-prefix .gpu/sample --tokenizer-model TOKENIZER
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

step() {  # step NAME TIMEOUT COMMAND...: run, log to $OUT/NAME.log, print its tail
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $?" >> "$OUT/$name.log"
  grep -v -i "warn" "$OUT/$name.log" | tail -n 12
}

step correctness 240 python -m benchmarks.gpu_check
step tests 240 python -m pytest -q -x -p no:cacheprovider tests/model/test_attention_backends.py tests/model/test_rope.py
for size in 150m 400m; do
  step "throughput-$size" 150 python -m benchmarks.model_throughput --size $size --seq-length 1024 --batch 16 --dtype bf16
done
step train-150m 240 env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
  python -m ettin_megatron.pretrain --model-size 150m --data-path .gpu/sample_text_document --seq-length 1024 \
  --micro-batch-size 32 --global-batch-size 64 --train-iters 30 --log-interval 5 --eval-iters 0 --bf16 \
  --data-layout packed --lr 8e-4 --lr-warmup-iters 5 --num-workers 2
step data-pipeline 300 python -m benchmarks.data_pipeline --data-path .gpu/sample_text_document --seconds 3 --steps 8
