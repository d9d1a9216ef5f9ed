#!/usr/bin/env bash
# Shared body of pretrain_ettin_encoder.sh and pretrain_ettin_decoder.sh (they set OBJECTIVE and source
# this file). Everything is an environment variable with a default:
#
#   MODEL_SIZE      tiny | 17m | 32m | 68m | 150m | 400m | 1b          (default: tiny)
#   PHASE           1 | 2 | 3: picks examples/recipes/<encoder|decoder>/<size>/phase<PHASE>.yaml
#                   (tiny: phase 1 only)
#   RECIPE          any recipe file instead of the one above
#   TP, PP, VPP     tensor / pipeline / virtual pipeline sizes            (default: 1, 1, none)
#   NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT         torchrun's rendezvous
#   DATA_MIX        mixture YAML (examples/mixtures/), or DATA_PATH "prefix" / "w1 p1 w2 p2 ..."
#   TOKENIZER       tokenizer directory or tokenizer.json
#   SAVE, LOAD      checkpoint roots; LOAD defaults to SAVE (a rerun resumes, Megatron-LM style);
#                   FINETUNE=1 loads LOAD's weights only (then LOAD must be set)
#   PRECISION       bf16 | fp8 | fp32   (default: bf16 on a GPU, fp32 on the CPU)
#   TRAIN_ITERS     optimizer steps (Ettin recipes count tokens: TRAIN_TOKENS); either one shortens or
#                   lengthens a recipe, whose warm-up, anneal and batch ramp-up keep their share of the run
#   TRAIN_TOKENS    input tokens to train (overrides the recipe's train_tokens)
#   MICRO_BATCH, GLOBAL_BATCH_SIZE, RAMPUP_BATCH_SIZE ("START INCREMENT SAMPLES"),
#   RAMPUP_BATCH_SIZE_TOKENS ("START INCREMENT TOKENS"), SEQ_LENGTH, LR      recipe overrides
#   TENSORBOARD_DIR event files for TensorBoard (needs: pip install -e ".[tensorboard]")
#   WORK_DIR        demo work dir (default: ./runs/demo), EXTRA_ARGS: more pretrain flags
#
# Arguments after the script's name are pretrain flags too, passed on after EXTRA_ARGS
# (bash examples/pretrain_ettin_encoder.sh --validate-only checks the run and stops there).
#
# With neither DATA_MIX nor DATA_PATH and MODEL_SIZE=tiny this is the offline demo: it builds a sample
# corpus from text shipped with Python and a small BPE tokenizer in WORK_DIR (reused when present),
# preprocesses it, trains the tiny model (examples/recipes/<kind>/tiny/phase1.yaml) on the CPU or GPU,
# saves a checkpoint, exports it to Hugging Face and shows a fill-mask prediction (encoder) or a
# generated continuation (decoder). A rerun resumes it, or says it is complete.
#
# The arguments are checked once, in this process, before torchrun starts (pretrain --validate-only):
# a mistake is one line naming the variable to change, and exit status 2.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "error: PYTHON: $PYTHON is not a command; set it to a Python 3 interpreter" >&2; exit 2; }
case "${FINETUNE:-0}" in 0|1) ;; *) echo "error: FINETUNE must be 1 (start from LOAD's weights) or 0 (got $FINETUNE)" >&2; exit 2 ;; esac
# First run on a fresh machine: install the package into ./.venv (torch pinned to 2.13.0 so pip keeps
# an existing or local CPU build rather than fetching a newer CUDA one).
if ! "$PYTHON" -c "import ettin_megatron, megatron.core" 2>/dev/null; then
  if [ -n "${SLURM_JOB_ID:-}" ]; then  # every node at once, on a shared filesystem: never from a job
    echo "error: ettin_megatron is not installed for $PYTHON; install it before submitting (pip install -e .)" >&2
    exit 2
  fi
  if [ ! -x "$REPO/.venv/bin/python" ] || ! "$REPO/.venv/bin/python" -c "import ettin_megatron" 2>/dev/null; then
    echo "ettin_megatron is not installed: creating $REPO/.venv (one time)" >&2
    "$PYTHON" -m venv "$REPO/.venv"
    "$REPO/.venv/bin/pip" install -q "torch==2.13.0"
    "$REPO/.venv/bin/pip" install -q -e "$REPO"
  fi
  PYTHON="$REPO/.venv/bin/python"
fi
OBJECTIVE="${OBJECTIVE:?set by pretrain_ettin_encoder.sh / pretrain_ettin_decoder.sh}"
MODEL_SIZE="${MODEL_SIZE:-tiny}"
TP="${TP:-1}"; PP="${PP:-1}"; VPP="${VPP:-}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"; NNODES="${NNODES:-1}"; NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"; MASTER_PORT="${MASTER_PORT:-29500}"
for count in NPROC_PER_NODE NNODES; do  # bash arithmetic below multiplies them
  [[ "${!count}" =~ ^[0-9]+$ ]] || { echo "error: $count: must be a positive integer, got ${!count}" >&2; exit 2; }
done
WORK_DIR="${WORK_DIR:-./runs/demo}"
KIND=$([ "$OBJECTIVE" = clm ] && echo decoder || echo encoder)
HAS_GPU=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
PRECISION="${PRECISION:-$([ "$HAS_GPU" = 1 ] && echo bf16 || echo fp32)}"

ARGS=(--objective "$OBJECTIVE")
# pass VARIABLE --flag [list]: the variable's value (when set) as --flag, split on spaces for a flag that
# takes a list, and the pair recorded in LAUNCHER_FLAGS, so that a refusal names the variable to change.
LAUNCHER_FLAGS="--nproc-per-node=NPROC_PER_NODE --nnodes=NNODES --finetune=FINETUNE=1"
pass() {
  LAUNCHER_FLAGS+=" $2=$1"
  [ -n "${!1:-}" ] || return 0
  # shellcheck disable=SC2206  # a list flag (DATA_PATH, RAMPUP_BATCH_SIZE...): Megatron-style, split on spaces
  if [ "${3:-}" = list ]; then ARGS+=("$2" ${!1}); else ARGS+=("$2" "${!1}"); fi
}
pass MODEL_SIZE --model-size
pass TP --tensor-model-parallel-size
pass PP --pipeline-model-parallel-size
pass VPP --virtual-pipeline-model-parallel-size
case "$PRECISION" in
  bf16) ARGS+=(--bf16) ;;
  fp8) "$PYTHON" -c "import importlib.util, sys; sys.exit(not importlib.util.find_spec('transformer_engine'))" || {
         echo "PRECISION=fp8 needs Transformer Engine: pip install -e \".[gpu]\", or use PRECISION=bf16" >&2; exit 2; }
       ARGS+=(--bf16 --fp8-format hybrid) ;;
  fp32) ARGS+=(--no-bf16) ;;  # overrides the recipes' bf16: true
  *) echo "error: PRECISION must be bf16, fp8 or fp32 (got $PRECISION)" >&2; exit 2 ;;
esac

if [ -z "${DATA_MIX:-}" ] && [ -z "${DATA_PATH:-}" ] && [ "$MODEL_SIZE" = tiny ]; then
  # The offline demo: sample corpus -> tokenizer -> .bin/.idx, all reused when present.
  DEMO=1
  if [ "${PHASE:-1}" != 1 ] || [ -n "${RECIPE:-}" ]; then
    echo "error: the demo trains phase 1 of the tiny recipe only; unset PHASE / RECIPE, or set DATA_PATH or DATA_MIX" >&2
    exit 2
  fi
  mkdir -p "$WORK_DIR" 2>/dev/null || { echo "error: WORK_DIR: cannot create $WORK_DIR; choose a writable location" >&2; exit 2; }
  [ -f "$WORK_DIR/corpus.jsonl" ] || "$PYTHON" "$REPO/tools/build_sample_corpus.py" --output "$WORK_DIR/corpus.jsonl"
  [ -f "$WORK_DIR/tokenizer/tokenizer.json" ] || \
    "$PYTHON" "$REPO/tools/train_tokenizer.py" --input "$WORK_DIR/corpus.jsonl" --output-dir "$WORK_DIR/tokenizer" --vocab-size 4096
  [ -f "$WORK_DIR/data/sample_text_document.idx" ] || \
    "$PYTHON" "$REPO/tools/preprocess_data.py" --input "$WORK_DIR/corpus.jsonl" --output-prefix "$WORK_DIR/data/sample" \
      --tokenizer-model "$WORK_DIR/tokenizer" --workers "$(nproc 2>/dev/null || echo 2)"
  TOKENIZER="${TOKENIZER:-$WORK_DIR/tokenizer}"
  SAVE="${SAVE:-$WORK_DIR/checkpoints/$KIND}"
  DATA_PATH="$WORK_DIR/data/sample_text_document"
else
  DEMO=0
fi
SIZE_RECIPES="$REPO/examples/recipes/$KIND/$MODEL_SIZE"
if [ -z "${RECIPE:-}" ] && [ -d "$SIZE_RECIPES" ] && [ ! -f "$SIZE_RECIPES/phase${PHASE:-1}.yaml" ]; then
  echo "error: PHASE=${PHASE:-1}: the $MODEL_SIZE $KIND has phases $(cd "$SIZE_RECIPES" && ls phase*.yaml | tr -dc '0-9\n' | paste -sd ' '); choose one, or set RECIPE" >&2
  exit 2
fi
RECIPE="${RECIPE:-$SIZE_RECIPES/phase${PHASE:-1}.yaml}"
GLOBAL_BATCH_SIZE="${GLOBAL_BATCH_SIZE:-${GLOBAL_BATCH:-}}"  # GLOBAL_BATCH is read too, as a synonym
if [ "${FINETUNE:-0}" != 1 ]; then
  LOAD="${LOAD:-${SAVE:-}}"  # Megatron-LM's convention: a relaunch continues its own checkpoints
fi
pass RECIPE --recipe
pass DATA_MIX --data-mix
pass DATA_PATH --data-path list
pass TRAIN_ITERS --train-iters
pass TRAIN_TOKENS --train-tokens
pass MICRO_BATCH --micro-batch-size
pass GLOBAL_BATCH_SIZE --global-batch-size
pass RAMPUP_BATCH_SIZE --rampup-batch-size list
pass RAMPUP_BATCH_SIZE_TOKENS --rampup-batch-size-tokens list
pass SEQ_LENGTH --seq-length
pass LR --lr
pass TOKENIZER --tokenizer-model
pass SAVE --save
pass LOAD --load
pass TENSORBOARD_DIR --tensorboard-dir
[ "${FINETUNE:-0}" = 1 ] && ARGS+=(--finetune)

# Check everything once, here, before torchrun starts one process per GPU; a refusal names this
# launcher's variables instead of pretrain's flags.
export ETTIN_LAUNCHER_FLAGS="$LAUNCHER_FLAGS"
# shellcheck disable=SC2086  # EXTRA_ARGS: free-form extra flags
WORLD_SIZE=$(( NPROC_PER_NODE * NNODES )) "$PYTHON" -m ettin_megatron.pretrain --validate-only "${ARGS[@]}" ${EXTRA_ARGS:-} "$@"
unset ETTIN_LAUNCHER_FLAGS
# torchrun's own variables, which pretrain never sees: refused here rather than by torchrun's traceback.
if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || (( 10#$NODE_RANK >= NNODES )); then
  echo "error: NODE_RANK must be a node number from 0 to NNODES - 1 = $(( NNODES - 1 )) (got $NODE_RANK)" >&2; exit 2
fi
if ! [[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || (( 10#$MASTER_PORT < 1 || 10#$MASTER_PORT > 65535 )); then
  echo "error: MASTER_PORT must be a port number from 1 to 65535 (got $MASTER_PORT)" >&2; exit 2
fi
for arg in "$@"; do [ "$arg" = --validate-only ] && exit 0; done   # checked, as asked: nothing to train

# The ranks end themselves if this script dies without a word (kill -9): training/stopping.py.
export ETTIN_LAUNCHER_PID=$$
# shellcheck disable=SC2086
"$PYTHON" -m torch.distributed.run --nproc-per-node "$NPROC_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m ettin_megatron.pretrain "${ARGS[@]}" ${EXTRA_ARGS:-} "$@"

if [ "$DEMO" = 1 ]; then
  "$PYTHON" "$REPO/tools/convert_checkpoint.py" megatron-to-hf --load "$SAVE" --output "$WORK_DIR/hf/$KIND"
  if [ "$KIND" = encoder ]; then
    "$PYTHON" "$REPO/tools/fill_mask.py" "$WORK_DIR/hf/$KIND" "The Python [MASK] library provides functions."
  else
    "$PYTHON" "$REPO/tools/generate.py" "$WORK_DIR/hf/$KIND" "The Python standard library"
  fi
fi
