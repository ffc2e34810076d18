#!/usr/bin/env bash
# Throughput, memory and validation speed of batch-runner against an instant engine.
#
#   bench/run.sh            # full run (about 2 minutes on 2 cores)
#   ROUNDS=1 bench/run.sh   # quicker, noisier
#
# What it measures, in one run so the numbers can be compared as ratios:
# - `run` on 100k requests against `sim-engine` at zero latency, and `wrk` posting the same chat
#   body to the same engine with the same concurrency: runner requests/s over wrk requests/s
#   (the median of ROUNDS interleaved rounds each);
# - peak RSS of `run` on 100k and on 1M requests;
# - `validate` speed in MB/s on the 1M-request file (about 290 MB);
# - the cost of checkpointing: `run` 100k at the default checkpoint interval against `run` with
#   checkpoints off (only the final one), median of ROUNDS interleaved rounds;
# - finalize of the 1M result set (input order: external sort of the index + copy of every
#   result), against copying the same bytes with `cp` and `sync`, and the run's peak RSS.
# Needs wrk (Debian package `wrk`; installed here when missing and running as root), python3
# and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-64}
WRK_SECONDS=${WRK_SECONDS:-5}
work=target/bench
mkdir -p "$work"

need_wrk
[ -x /usr/bin/time ] || { echo "GNU time is missing: apt-get install time" >&2; exit 2; }

build_release

for n in 100000 1000000; do
  [ -s "$work/in-$n.jsonl" ] || python3 bench/gen_input.py "$n" > "$work/in-$n.jsonl"
done

start "$work/sim.log" "$bin" sim-engine --port 0 --ttft-ms 0 --ms-per-token 0

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Runs `run` on $1 requests with any further arguments; prints "req/s peak_rss_kb".
run_once() {
  local n=$1
  shift
  rm -rf "$work/out.jsonl" "$work/out.errors.jsonl" "$work/out.jsonl.state"
  /usr/bin/time -f "%M" -o "$work/time.txt" "$bin" run "$work/in-$n.jsonl" \
    --output "$work/out.jsonl" --engine-url "$url" --max-concurrency "$CONCURRENCY" \
    --progress off --summary-json "$work/summary.json" "$@" 2>/dev/null || true
  local rps
  rps=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["succeeded"]==int(sys.argv[2]), s; print(round(s["requests_per_second"]))' "$work/summary.json" "$n")
  echo "$rps $(tail -n 1 "$work/time.txt")"
}

wrk_once() {
  wrk -t1 -c"$CONCURRENCY" -d"${WRK_SECONDS}s" -s bench/post.lua "$url/v1/chat/completions" \
    | awk '/Requests\/sec/ {print int($2)}'
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "rounds: $ROUNDS, concurrency: $CONCURRENCY"
: > "$work/wrk.txt"; : > "$work/runner.txt"
for r in $(seq 1 "$ROUNDS"); do
  w=$(wrk_once); echo "$w" >> "$work/wrk.txt"
  read -r rps rss < <(run_once 100000); echo "$rps" >> "$work/runner.txt"
  echo "round $r: wrk $w req/s, run $rps req/s (peak RSS ${rss} KB)"
done
wrk_med=$(median < "$work/wrk.txt")
run_med=$(median < "$work/runner.txt")
read -r _ rss_100k < <(run_once 100000)

: > "$work/ckpt-on.txt"; : > "$work/ckpt-off.txt"
for r in $(seq 1 "$ROUNDS"); do
  read -r on _ < <(run_once 100000); echo "$on" >> "$work/ckpt-on.txt"
  read -r off _ < <(run_once 100000 --checkpoint-every 0 --checkpoint-interval 0); echo "$off" >> "$work/ckpt-off.txt"
  echo "round $r: checkpoints on $on req/s, off $off req/s"
done
ckpt_on=$(median < "$work/ckpt-on.txt")
ckpt_off=$(median < "$work/ckpt-off.txt")

read -r rps_1m rss_1m < <(run_once 1000000 --keep-state)
finalize_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["finalize_seconds"])' "$work/summary.json")
# The baseline: GNU cp (in-kernel copy where the file system allows) plus fsync of each copy.
copy_start=$(date +%s.%N)
for name in output.spool.jsonl errors.spool.jsonl; do
  cp "$work/out.jsonl.state/$name" "$work/copy.$name"
  sync "$work/copy.$name"
done
copy_end=$(date +%s.%N)
copy_s=$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$copy_start" "$copy_end")
rm -rf "$work/copy".* "$work/out.jsonl.state"

bytes=$(stat -c %s "$work/in-1000000.jsonl")
start=$(date +%s.%N)
"$bin" validate "$work/in-1000000.jsonl" 2>/dev/null
end=$(date +%s.%N)

python3 - "$wrk_med" "$run_med" "$rss_100k" "$rss_1m" "$rps_1m" "$bytes" "$start" "$end" \
  "$ckpt_on" "$ckpt_off" "$finalize_s" "$copy_s" <<'PY'
import sys
(wrk, run, rss100k, rss1m, rps1m, size, start, end,
 ckpt_on, ckpt_off, finalize_s, copy_s) = map(float, sys.argv[1:])
print()
print("| measure | value | target |")
print("|---|---|---|")
print(f"| wrk, median req/s | {wrk:.0f} | |")
print(f"| run 100k, median req/s | {run:.0f} | |")
print(f"| run / wrk | {run / wrk:.2f} | >= 0.6 |")
print(f"| run 1M, req/s | {rps1m:.0f} | |")
print(f"| peak RSS, run 100k | {rss100k / 1024:.1f} MB | |")
print(f"| peak RSS, run 1M | {rss1m / 1024:.1f} MB | < 100 MB |")
print(f"| RSS growth 100k -> 1M | {100 * (rss1m / rss100k - 1):.0f}% | <= 20% |")
print(f"| validate 1M ({size / 1e6:.0f} MB) | {size / 1e6 / (end - start):.0f} MB/s | >= 200 MB/s |")
print(f"| run 100k, checkpoints at the default interval, median req/s | {ckpt_on:.0f} | |")
print(f"| run 100k, checkpoints off, median req/s | {ckpt_off:.0f} | |")
print(f"| checkpoint cost | {100 * (1 - ckpt_on / ckpt_off):.1f}% | < 5% |")
print(f"| finalize 1M results, input order | {finalize_s:.2f} s | |")
print(f"| copy of the same bytes (cp + sync) | {copy_s:.2f} s | |")
print(f"| finalize / copy | {finalize_s / copy_s:.2f} | <= 3 |")
PY
