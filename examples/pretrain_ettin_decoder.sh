#!/usr/bin/env bash
# Pretrain an Ettin decoder (CLM): the encoder's recipe with causal attention. Same variables as
# pretrain_ettin_encoder.sh (see pretrain_ettin_common.sh); with nothing set, the offline CPU demo.
OBJECTIVE=clm
source "$(dirname "${BASH_SOURCE[0]}")/pretrain_ettin_common.sh"
