#!/bin/bash
# TPU VM (PyTorch/XLA): one process per local TPU chip via torch_xla.launch, bf16.
#   training/launch/tpu.sh training/configs/S.yaml [key=value ...]
# Multi-host pods: run the same command on every worker, e.g.
#   gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=all --command \
#     "cd rvm && training/launch/tpu.sh training/configs/S.yaml"
set -euo pipefail
CONFIG=${1:?usage: tpu.sh CONFIG [key=value ...]}
shift
export PJRT_DEVICE=TPU
exec python -m rvm_core.cli pretrain --config "$CONFIG" run.device=xla --resume "$@"
