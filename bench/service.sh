#!/usr/bin/env bash
# Benchmarks of the batch service (`batch-runner serve`), release build, SQLite, local files:
# - a 1 GB upload through POST /v1/files (curl, multipart): MB/s, and the service's peak RSS
#   before and after the upload (the upload is streamed, so memory must stay flat);
# - 50 batches (1000 requests each) created at once: all must complete; time to the last one;
# - GET /v1/batches/{id} latency with wrk (8 connections, 10 s) while 10 batches run against
#   a sim-engine with a realistic per-request latency: p50 and p99.
#
#   bench/service.sh
#
# Needs curl, python3 and wrk (Debian package; installed here when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

UPLOAD_MB=${UPLOAD_MB:-1024}
work=target/bench-service
rm -rf "$work/data"
mkdir -p "$work"

need_wrk
build_release

peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# A realistic engine: 100 ms to the first token, 5 ms per token, 16 tokens (about 0.18 s).
start "$work/sim.log" "$bin" sim-engine --port 0 --ttft-ms 100 --ms-per-token 5 --max-running 4096
sim=$url
BATCH_RUNNER_API_KEYS="$key bench" start "$work/serve.log" "$bin" serve --listen 127.0.0.1:0 \
  --data-dir "$work/data" --engine-url "$sim" --max-upload-bytes $(( (UPLOAD_MB + 64) * 1024 * 1024 )) \
  --max-concurrent-batches 50 --max-concurrency 64
svc=$url
serve_pid=${pids[-1]}
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"

# --- 1 GB upload ---
big=$work/big.jsonl
if [ ! -s "$big" ] || [ "$(stat -c %s "$big")" -lt $(( UPLOAD_MB * 1024 * 1024 )) ]; then
  python3 bench/gen_input.py 100000 > "$work/100k.jsonl"
  : > "$big"
  while [ "$(stat -c %s "$big")" -lt $(( UPLOAD_MB * 1024 * 1024 )) ]; do cat "$work/100k.jsonl" >> "$big"; done
fi
bytes=$(stat -c %s "$big")
before_rss=$(rss_kb "$serve_pid")
before_peak=$(peak_kb "$serve_pid")
timing=$(curl -sf -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $key" \
  -F purpose=batch -F "file=@$big;filename=big.jsonl" "$svc/v1/files")
after_peak=$(peak_kb "$serve_pid")
awk -v b="$bytes" -v t="$timing" -v r0="$before_rss" -v p0="$before_peak" -v p1="$after_peak" 'BEGIN {
  printf "upload: %.0f MB in %.2f s = %.0f MB/s; service RSS before %.1f MB, peak before %.1f MB, peak after %.1f MB\n",
    b/1e6, t, b/1e6/t, r0/1024, p0/1024, p1/1024 }'
big_id=$(api "$svc/v1/files?limit=1" | json_field '["data"][0]["id"]')
api -X DELETE "$svc/v1/files/$big_id" >/dev/null

# --- 50 batches at once ---
python3 bench/gen_input.py 1000 > "$work/1k.jsonl"
file=$(api -F purpose=batch -F "file=@$work/1k.jsonl" "$svc/v1/files" | json_field '["id"]')
start_s=$(date +%s.%N)
creators=()
for i in $(seq 1 50); do
  api "$svc/v1/batches" -d "{\"input_file_id\":\"$file\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" >/dev/null &
  creators+=($!)
done
wait "${creators[@]}"
while :; do
  done_count=$(api "$svc/v1/batches?limit=100" | python3 -c '
import json,sys
d=json.load(sys.stdin)["data"]
print(sum(1 for b in d if b["status"] in ("completed","failed","expired","cancelled")), sum(1 for b in d if b["status"]=="completed"), sum(b["request_counts"]["completed"] for b in d))')
  read -r ended completed requests <<<"$done_count"
  [ "$ended" -ge 50 ] && break
  sleep 0.5
done
end_s=$(date +%s.%N)
awk -v s="$start_s" -v e="$end_s" -v c="$completed" -v r="$requests" 'BEGIN {
  printf "50 batches x 1000 requests: %d completed, %d requests succeeded, %.1f s to the last (%.0f req/s)\n", c, r, e-s, r/(e-s) }'

# --- GET latency while 10 batches run ---
python3 bench/gen_input.py 20000 > "$work/20k.jsonl"
file=$(api -F purpose=batch -F "file=@$work/20k.jsonl" "$svc/v1/files" | json_field '["id"]')
ids=()
for i in $(seq 1 10); do
  ids+=("$(api "$svc/v1/batches" -d "{\"input_file_id\":\"$file\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" | json_field '["id"]')")
done
# Let every worker reach in_progress first.
for _ in $(seq 1 100); do
  running=$(api "$svc/v1/batches?limit=10" | python3 -c 'import json,sys; print(sum(1 for b in json.load(sys.stdin)["data"] if b["status"]=="in_progress"))')
  [ "$running" -ge 10 ] && break
  sleep 0.2
done
wrk -t 2 -c 8 -d 10s --latency -H "Authorization: Bearer $key" "$svc/v1/batches/${ids[0]}" > "$work/wrk.txt"
still=$(api "$svc/v1/batches?limit=10" | python3 -c 'import json,sys; print(sum(1 for b in json.load(sys.stdin)["data"] if b["status"]=="in_progress"))')
reqs=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
echo "GET /v1/batches/{id} while $running batches ran ($still still running at the end): $reqs req/s, p50 $p50, p99 $p99"
