#!/usr/bin/env bash
# A server restart under load: a release `game_server`, a `game_client` with 16 callers, the
# server killed (SIGKILL) after 2 s and started again on the same address at once:
#   scripts/restart.sh [rounds=5]
# Prints the client's JSON line per round; `max_gap_ms` is the longest stretch in which no call
# succeeded (the server's death, the client noticing, reconnecting and getting the manifest).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
cargo build -q --release --examples
bin=target/release/examples
port=7977
for _ in $(seq "$rounds"); do
  "$bin/game_server" --bind "127.0.0.1:$port" > /dev/null 2>&1 &
  first=$!
  sleep 0.5
  "$bin/game_client" --connect "127.0.0.1:$port" --calls 1000000 --concurrency 16 \
    > target/restart.json 2> target/restart-client.err &
  client=$!
  sleep 2
  kill -9 "$first"
  "$bin/game_server" --bind "127.0.0.1:$port" > /dev/null 2> target/restart-server.err &
  second=$!
  wait "$client" || true # it exits 1: calls made while no server was up failed (NotConnected)
  cat target/restart.json
  kill "$second"
  wait "$second" 2> /dev/null || true
done
