#!/usr/bin/env bash
# Engine-aware flow control benchmark (see bench/flow.py for the scenarios). About 4 minutes.
#
#   bench/flow.sh                 # table on stdout, plot in docs/img/flow.png
#   WINDOW=15 bench/flow.sh       # shorter windows, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
venv=target/bench-venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'matplotlib==3.10.7'
fi
build_release
mkdir -p target/bench-flow
"$venv/bin/python" bench/flow.py "$bin" "$PWD/target/bench-flow" docs/img/flow.png
