#!/usr/bin/env bash
# Two builds of batch-runner side by side: `run` on 100k chat requests against one instant
# sim-engine, the builds taking turns (which goes first alternates each round), so a change's
# cost on the request path shows as a ratio measured in one run.
#
#   bench/compare.sh OLD_BINARY NEW_BINARY [ROUNDS]     # ROUNDS: 6 by default
#
# Prints each run's requests/s (the summary's, over the job's whole wall time) and CPU time
# (user + sys of the process), then the medians and the new/old ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

old=${1:?usage: bench/compare.sh OLD_BINARY NEW_BINARY [ROUNDS]}
new=${2:?usage: bench/compare.sh OLD_BINARY NEW_BINARY [ROUNDS]}
rounds=${3:-6}
work=target/bench-compare
mkdir -p "$work"
[ -s "$work/in.jsonl" ] || python3 bench/gen_input.py 100000 > "$work/in.jsonl"
start "$work/sim.log" "$new" sim-engine --port 0 --ttft-ms 0 --ms-per-token 0

results=()
for round in $(seq 1 "$rounds"); do
  order="old new"
  [ $((round % 2)) = 0 ] && order="new old"
  for name in $order; do
    binary=$old
    [ "$name" = new ] && binary=$new
    rm -rf "$work/out.jsonl" "$work/out.errors.jsonl" "$work/out.jsonl.state"
    cpu=$( { /usr/bin/time -f "%U %S" "$binary" run "$work/in.jsonl" -o "$work/out.jsonl" \
      --engine-url "$url" --max-concurrency 64 --progress off --summary-json "$work/s.json" \
      2>&1 >/dev/null; } | tail -n 1 | awk '{print $1 + $2}')
    rps=$(python3 -c "import json; print(round(json.load(open('$work/s.json'))['requests_per_second']))")
    echo "round $round $name: $rps req/s, $cpu s CPU"
    results+=("$name $rps $cpu")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
runs = {"old": [], "new": []}
for line in sys.stdin:
    name, rps, cpu = line.split()
    runs[name].append((float(rps), float(cpu)))
med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
for k in ("old", "new"):
    print(f"{k}: median {med[k][0]:.0f} req/s, {med[k][1]:.2f} s CPU")
new, old = med["new"], med["old"]
print(f"new/old: req/s {new[0] / old[0]:.3f}, CPU {new[1] / old[1]:.3f}")
'
