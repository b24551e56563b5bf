#!/usr/bin/env bash
# A server dying under load (issue 22's measurement): a throwaway redis-server, four release
# `game_server --redis` on `--bind 127.0.0.1:0`, and a `game_client --redis` with 16 callers for
# 8 s; at 3 s one server is killed with SIGKILL. Prints the client's JSON line per round:
# `failed` and `errors` (by kind), `max_gap_ms` (the longest any caller waited between two
# answers), `per_server`.
#   scripts/failover.sh [rounds=3]        BIN=dir of other builds' examples (default: this one)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source scripts/lib/throwaway-redis.sh
if [ -z "${BIN:-}" ]; then
  cargo build -q --release --examples
fi
bin=${BIN:-target/release/examples}
for round in $(seq "$rounds"); do
  cluster="failover-$round"
  pids=()
  for _ in 1 2 3 4; do
    "$bin/game_server" --bind 127.0.0.1:0 --redis "$url" --cluster "$cluster" > /dev/null 2>&1 &
    pids+=($!)
  done
  sleep 1
  "$bin/game_client" --redis "$url" --cluster "$cluster" --secs 8 --concurrency 16 \
    > target/failover.json 2> target/failover-client.err &
  client=$!
  sleep 3
  kill -9 "${pids[1]}"
  wait "$client" || true # exits 1 when a call failed
  cat target/failover.json
  for p in "${pids[0]}" "${pids[2]}" "${pids[3]}"; do kill "$p"; done
  wait "${pids[0]}" "${pids[2]}" "${pids[3]}" 2> /dev/null || true
done
