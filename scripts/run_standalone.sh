#!/usr/bin/env bash
# One process, no collectives.
#
#   bash scripts/run_standalone.sh CONFIG [train.py options ...]
#   bash scripts/run_standalone.sh configs/mnasnet/quickstart_demo_cpu.yaml
#
# The log is also written to $LOG_DIR/standalone.log (default ./outputs/standalone_log).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python "$here/launch.py" --launcher none "$@"
