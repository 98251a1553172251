#!/usr/bin/env bash
# Data-parallel training on GPUs with mpirun (collectives: NCCL).
#
#   bash scripts/run_distributed_gpu.sh 8 configs/mnasnet/mnasnet0.75_gpu.yaml --data_dir /path/to/imagenet
#
# Environment: HOSTFILE (an Open MPI hostfile for several machines), LOG_DIR (default ./outputs/mpirun_log), SCRIPT.
# Per-rank logs: $LOG_DIR/1/rank.<N>/stdout. Exit status: non-zero if any rank failed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python "$here/launch.py" --launcher mpirun --device GPU "$@"
