#!/usr/bin/env bash
# Beyond one machine: throughput with 1 and 2 worker pools sharing PostgreSQL and object storage
# (moto), against an instant sim-engine, and the database load per request.
#
#   bench/distributed.sh            # 20 batches x 5000 requests per scenario
#   BATCHES=10 LINES=2000 bench/distributed.sh
#
# For each scenario: one `serve` without workers, N `worker-pool`s (4 batches at once each, 64
# requests in flight per batch), BATCHES batches created at once; reported: time to the last
# batch, batches per minute, requests per second, and from PostgreSQL's statistics the
# transactions (every statement outside a transaction is one) and the row writes to the
# service's tables per 100 requests. Needs python3 (moto goes into target/test-venv, as for the
# tests), psql and a PostgreSQL at BATCH_RUNNER_TEST_POSTGRES (default the local `test`).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

BATCHES=${BATCHES:-20}
LINES=${LINES:-5000}
PG=${BATCH_RUNNER_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
export PGOPTIONS="-c client_min_messages=warning"
work=target/bench-distributed
rm -rf "$work"
mkdir -p "$work"

venv=target/test-venv
if ! "$venv/bin/python" -c 'import moto.server' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
build_release


# moto stops when its stdin closes: hold a FIFO open with a process the trap kills.
mkfifo "$work/moto.in"
sleep infinity > "$work/moto.in" 2>/dev/null &
pids+=($!)
"$venv/bin/python" tests/support/moto_server.py < "$work/moto.in" > "$work/moto.log" 2>&1 &
pids+=($!)
s3=$(wait_line "$work/moto.log" 's/^listening on //p')
curl -sf -X PUT "$s3/jobs" >/dev/null
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$s3

start "$work/sim.log" "$bin" sim-engine --port 0 --ttft-ms 0 --ms-per-token 0 --max-running 4096
sim=$url
python3 bench/gen_input.py "$LINES" > "$work/in.jsonl"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F); $BATCHES batches x $LINES requests"

for pools in 1 2; do
  schema="bench_$(date +%s%N)"
  psql "$PG" -q -c "CREATE SCHEMA $schema" >/dev/null
  db="$PG?options=-c%20search_path%3D$schema"
  shared=(--database "$db" --storage-url "s3://jobs/bench-$schema")
  BATCH_RUNNER_API_KEYS="$key bench" "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/api-$pools" \
    --max-concurrent-batches 0 "${shared[@]}" > "$work/serve-$pools.log" 2>&1 &
  pids+=($!)
  svc=$(wait_line "$work/serve-$pools.log" 's/^listening on //p')
  for p in $(seq 1 "$pools"); do
    "$bin" worker-pool --data-dir "$work/pool-$pools-$p" "${shared[@]}" --engine-url "$sim" \
      --max-concurrent-batches 4 --max-concurrency 64 > "$work/pool-$pools-$p.log" 2>&1 &
    pids+=($!)
    wait_line "$work/pool-$pools-$p.log" 's/^\(worker pool ready\)$/\1/p' >/dev/null
  done
  file=$(api -F purpose=batch -F "file=@$work/in.jsonl" "$svc/v1/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  stats() {
    psql "$PG" -Atq -c "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
      (SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables WHERE schemaname = '$schema')"
  }
  read -r xact0 rows0 <<<"$(stats | tr '|' ' ')"
  start=$(date +%s.%N)
  for i in $(seq 1 "$BATCHES"); do
    api "$svc/v1/batches" -d "{\"input_file_id\":\"$file\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}" >/dev/null
  done
  while :; do
    read -r ended requests <<<"$(api "$svc/v1/batches?limit=100" | python3 -c '
import json,sys
d=json.load(sys.stdin)["data"]
print(sum(b["status"] in ("completed","failed","expired","cancelled") for b in d), sum(b["request_counts"]["completed"] for b in d))')"
    [ "$ended" -ge "$BATCHES" ] && break
    sleep 0.2
  done
  end=$(date +%s.%N)
  # Statistics reach pg_stat_* within about half a second.
  sleep 1
  read -r xact1 rows1 <<<"$(stats | tr '|' ' ')"
  awk -v p="$pools" -v s="$start" -v e="$end" -v r="$requests" -v b="$BATCHES" \
      -v x=$((xact1 - xact0)) -v w=$((rows1 - rows0)) 'BEGIN {
    t = e - s
    printf "%d pool(s): %d batches in %.1f s = %.1f batches/min, %.0f req/s; %d transactions (%.2f per 100 requests), %d row writes (%.3f per 100 requests)\n",
      p, b, t, b / t * 60, r / t, x, x / r * 100, w, w / r * 100 }'
  # Stop this scenario's processes before the next.
  for pid in "${pids[@]:3}"; do kill "$pid" 2>/dev/null || true; done
  pids=("${pids[@]:0:3}")
  sleep 1
  psql "$PG" -q -c "DROP SCHEMA $schema CASCADE" >/dev/null
done
