#!/usr/bin/env bash
# Adaptive against fixed concurrency on each sim-engine profile of a real server, in one run:
# N chat requests (max_tokens 16) on a continuous-batching engine (every decode step slower the
# more requests run), `run` at fixed 64 and 256 and `--concurrency adaptive --max-concurrency
# 256`, interleaved over ROUNDS rounds; prints req/s (median of the rounds) and adaptive over
# the best fixed setting. About 2 minutes.
#
#   bench/profiles.sh            # N=2000 ROUNDS=3
#   N=1000 ROUNDS=5 bench/profiles.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

N=${N:-2000}
ROUNDS=${ROUNDS:-3}
work=target/bench-profiles
mkdir -p "$work"
build_release
python3 bench/gen_input.py "$N" > "$work/in.jsonl"

# What each profile's engine is like: SGLang and vLLM with a running set of 64 and a queue
# gauge in /metrics; transformers serve batching up to 256 with no metrics.
declare -A engine=(
  [sglang]="--profile sglang --max-running 64 --ttft-ms 30 --ms-per-token 10 --ms-per-token-per-running 0.1"
  [vllm]="--profile vllm --max-running 64 --ttft-ms 30 --ms-per-token 10 --ms-per-token-per-running 0.1"
  [transformers]="--profile transformers --max-running 256 --ttft-ms 20 --ms-per-token 2 --ms-per-token-per-running 0.3"
)
variants=("--max-concurrency 64" "--max-concurrency 256" "--concurrency adaptive --max-concurrency 256")

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores; N=$N, ROUNDS=$ROUNDS"
echo "| profile | fixed 64 | fixed 256 | adaptive 256 | adaptive / best fixed |"
echo "|---|---|---|---|---|"
for profile in sglang vllm transformers; do
  # shellcheck disable=SC2086
  start "$work/sim-$profile.log" "$bin" sim-engine --port 0 ${engine[$profile]}
  sim_pid=${pids[-1]}
  declare -A rates=()
  for _ in $(seq 1 "$ROUNDS"); do
    for i in "${!variants[@]}"; do
      rm -rf "$work/out.jsonl" "$work/out.errors.jsonl" "$work/out.jsonl.state"
      # shellcheck disable=SC2086
      "$bin" run "$work/in.jsonl" --output "$work/out.jsonl" --engine-url "$url" --progress off \
        --summary-json "$work/summary.json" ${variants[$i]} 2>/dev/null || true
      rate=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["succeeded"]==int(sys.argv[2]), s; print(round(s["requests_per_second"], 1))' "$work/summary.json" "$N")
      rates[$i]="${rates[$i]:-} $rate"
    done
  done
  kill "$sim_pid" 2>/dev/null || true
  m=()
  for i in "${!variants[@]}"; do m[$i]=$(tr ' ' '\n' <<<"${rates[$i]}" | grep . | median); done
  ratio=$(python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); print(f'{c/max(a,b):.3f}')" "${m[0]}" "${m[1]}" "${m[2]}")
  echo "| $profile | ${m[0]} | ${m[1]} | ${m[2]} | $ratio |"
  unset rates
done
