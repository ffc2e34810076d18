#!/usr/bin/env bash
# Deadline-first claiming and fair shares between owners (see bench/scheduling.py).
#
#   bench/scheduling.sh [BINARY_BEFORE]   # a build from before the change, to compare
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
echo "machine: $(nproc) cores; $(date -u +%F)"
python3 bench/scheduling.py "$bin" ${1:+"$1"} "$PWD/target/bench-scheduling"
