#!/bin/bash
# Multi-node RVM pretraining on SLURM: one torchrun per node, 8 GPUs each, c10d rendezvous on
# the first node. Usage: sbatch --nodes=4 training/launch/slurm_multinode.sh training/configs/S.yaml [key=value ...]
#SBATCH --job-name=rvm-pretrain
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --time=72:00:00
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm_multinode.sh CONFIG [key=value ...]}
shift
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export OMP_NUM_THREADS=8
# --resume: a requeued / restarted job continues from the latest checkpoint (fresh start if none)
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" \
  -m rvm_core.cli pretrain --config "$CONFIG" --resume "$@"
