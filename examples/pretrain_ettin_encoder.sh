#!/usr/bin/env bash
# Pretrain an Ettin encoder (MLM). With nothing set: the offline CPU demo (see pretrain_ettin_common.sh).
# Cluster run, e.g.: MODEL_SIZE=150m PHASE=1 DATA_MIX=examples/mixtures/phase1.yaml TOKENIZER=/tok \
#   NPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 SAVE=/ckpt/150m bash examples/pretrain_ettin_encoder.sh
OBJECTIVE=mlm
source "$(dirname "${BASH_SOURCE[0]}")/pretrain_ettin_common.sh"
