#!/bin/bash
# One node, all its GPUs (DDP for S/B, FSDP2 for L/H):
#   training/launch/node.sh training/configs/S.yaml [key=value ...]
set -euo pipefail
CONFIG=${1:?usage: node.sh CONFIG [key=value ...]}
shift
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
exec torchrun --standalone --nproc-per-node "$NGPU" \
  -m rvm_core.cli pretrain --config "$CONFIG" --resume "$@"
