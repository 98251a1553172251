#!/usr/bin/env bash
# Data-parallel training on the CPU with msrun (MindSpore's launcher; collectives: mccl over TCP).
#
#   bash scripts/run_distributed_cpu.sh NUM_WORKERS CONFIG [train.py options ...]
#   bash scripts/run_distributed_cpu.sh 2 configs/mnasnet/quickstart_demo_cpu.yaml --epoch_size 5
#
# Environment: MASTER_ADDR (default 127.0.0.1), MASTER_PORT (default 8118), LOG_DIR (default ./outputs/msrun_log),
# NNODES / NODE_RANK for several machines (NUM_WORKERS is then the per-node count), SCRIPT (default train.py),
# CLUSTER_TIMEOUT seconds to wait for all workers to join (default 120).
# Per-rank logs: $LOG_DIR/worker_<rank>.log (+ scheduler.log). Exit status: non-zero if any worker failed; the
# failed rank's first error line is printed last. MindSpore logs errors only (GLOG_v=3) unless GLOG_v is set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python "$here/launch.py" --launcher msrun --device CPU "$@"
