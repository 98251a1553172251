#!/usr/bin/env bash
# Data-parallel training on Ascend NPUs with msrun (collectives: HCCL).
#
#   bash scripts/run_distributed_ascend.sh 8 configs/mnasnet/mnasnet1.0_ascend.yaml --data_dir /path/to/imagenet
#
# Environment: MASTER_ADDR, MASTER_PORT, LOG_DIR, NNODES, NODE_RANK, SCRIPT, CLUSTER_TIMEOUT (see run_distributed_cpu.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python "$here/launch.py" --launcher msrun --device Ascend "$@"
