#!/usr/bin/env bash
# Webhook delivery of the batch service, release build, SQLite:
# - 20 batches run for real: each must give exactly one outbox row and one verified delivery;
# - 1,000 batches ending at once: 1,000 events put in the outbox together (as the transactions
#   ending 1,000 batches would), then a service started on it: time until the receiver has
#   verified the last one, and that none came twice.
# The receiver is tests/sdk/webhook_receiver.py, which verifies each delivery with the official
# openai SDK (run scripts/test once first: it makes target/test-venv with the SDK).
#
#   bench/webhooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

py=${PYTHON:-target/test-venv/bin/python}
[ -x "$py" ] || { echo "$py is missing: run scripts/test once (it installs the openai SDK)" >&2; exit 2; }
work=target/bench-webhooks
rm -rf "$work"
mkdir -p "$work"
build_release
secret=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"

"$py" tests/sdk/webhook_receiver.py --secret "$secret" --out "$work/received.jsonl" > "$work/receiver.log" &
pids+=($!)
port=$(wait_line "$work/receiver.log" 's/^listening on //p')
echo "a http://127.0.0.1:$port/hook $secret" > "$work/hooks"
start "$work/sim.log" "$bin" sim-engine --port 0 --ttft-ms 1 --ms-per-token 0
sim=$url
serve() {
  BATCH_RUNNER_API_KEYS="$key a" start "$work/serve.log" "$bin" serve --listen 127.0.0.1:0 \
    --data-dir "$work/data" --engine-url "$sim" --max-concurrent-batches 8 \
    --webhook-file "$work/hooks" --webhook-allow-private
  svc=$url
}
verified() { grep -c '"type"' "$work/received.jsonl" 2>/dev/null || echo 0; }
unique() { "$py" -c 'import json,sys; print(len({json.loads(l)["webhook_id"] for l in open(sys.argv[1]) if "\"type\"" in l}))' "$work/received.jsonl"; }

# --- 20 real batches ---
serve
python3 bench/gen_input.py 5 > "$work/5.jsonl"
file=$(api -F purpose=batch -F "file=@$work/5.jsonl" "$svc/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for i in $(seq 1 20); do
  api "$svc/v1/batches" -d "{\"input_file_id\":\"$file\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" >/dev/null
done
for _ in $(seq 1 600); do [ "$(verified)" -ge 20 ] && break; sleep 0.1; done
rows=$("$bin" webhooks --data-dir "$work/data" list --limit 100000 | wc -l)
echo "20 batches: $(verified) deliveries verified by the SDK, $(unique) distinct events, $rows outbox rows"

# --- 1,000 batches ending at once ---
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
python3 - "$work/data/batch-runner.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
now = int(time.time())
rows = [(f"evt_bench{i:06d}", f"batch_bench{i:06d}", "a", "batch.completed", now,
         now * 1000 + 25 * 3600 * 1000) for i in range(1000)]
db.executemany("INSERT INTO webhook_events (id, batch_id, owner, type, created_at, retry_until) "
               "VALUES (?, ?, ?, ?, ?, ?)", rows)
db.commit()
PY
t0=$(date +%s.%N)
serve
for _ in $(seq 1 3000); do [ "$(verified)" -ge 1020 ] && break; sleep 0.05; done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v n="$(($(verified) - 20))" -v u="$(($(unique) - 20))" 'BEGIN {
  printf "1000 events due at once: %d verified (%d distinct) %.2f s after the service started (%.0f events/s)\n", n, u, b-a, n/(b-a) }'
