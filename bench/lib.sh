# What the benchmark scripts share; sourced from bench/*.sh (run from the repository's root).

# Builds the release binary (its output shown only when the build fails); sets $bin.
build_release() {
  cargo build --release --locked >/dev/null 2>&1 || cargo build --release --locked
  bin=$PWD/target/release/batch-runner
}

# wrk from Debian's packages, installed when missing and running as root.
need_wrk() {
  command -v wrk >/dev/null && return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
  else
    echo "wrk is missing: apt-get install wrk" >&2
    exit 2
  fi
}

# The API key the scripts give `serve`, and a call to its API with it.
key=sk-bench
api() { curl -sf -H "Authorization: Bearer $key" "$@"; }

# Every process the script starts goes in here, and is stopped when the script exits.
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

# FILE PATTERN: waits (15 s at most) for a line of FILE that the sed PATTERN prints; prints it.
wait_line() {
  for _ in $(seq 1 300); do
    local got
    got=$(sed -n "$2" "$1" | head -n 1)
    [ -n "$got" ] && { echo "$got"; return 0; }
    sleep 0.05
  done
  echo "timed out waiting in $1: $(tail -n 3 "$1" "$1.err" 2>/dev/null)" >&2
  exit 3
}

# LOG CMD...: starts CMD (stdout to LOG, stderr to LOG.err), which prints "listening on URL"
# first; sets $url.
start() {
  local log=$1
  shift
  "$@" > "$log" 2>"$log.err" &
  pids+=($!)
  url=$(wait_line "$log" 's/^listening on //p')
}
