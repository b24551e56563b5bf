#!/usr/bin/env bash
# A fleet that changes under load, with Redis membership: a throwaway redis-server, two
# release `game_server --redis` on `--bind 127.0.0.1:0`, and a `game_client --redis` with 16
# callers for 6 s. At 2 s a third server starts (it registers; the client follows), at 3.5 s
# one of the first two stops gracefully (SIGTERM: it drains and deregisters), at 4.5 s the
# other is killed (SIGKILL: its calls in flight are lost, its entry lapses after its TTL).
#   scripts/fleet-change.sh [rounds=3]
# Prints the client's JSON line per round: `per_server` includes the server that joined;
# `lost_to_dead_server` counts the calls pending on the killed one.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source scripts/lib/throwaway-redis.sh
cargo build -q --release --examples
bin=target/release/examples
for round in $(seq "$rounds"); do
  cluster="change-$round"
  "$bin/game_server" --bind 127.0.0.1:0 --redis "$url" --cluster "$cluster" > /dev/null 2>&1 &
  a=$!
  "$bin/game_server" --bind 127.0.0.1:0 --redis "$url" --cluster "$cluster" > /dev/null 2>&1 &
  b=$!
  sleep 0.5
  "$bin/game_client" --redis "$url" --cluster "$cluster" --secs 6 --concurrency 16 \
    > target/fleet-change.json 2> target/fleet-change-client.err &
  client=$!
  sleep 2
  "$bin/game_server" --bind 127.0.0.1:0 --redis "$url" --cluster "$cluster" > /dev/null 2>&1 &
  c=$!
  sleep 1.5
  kill -TERM "$a"
  sleep 1
  kill -9 "$b"
  wait "$client" || true # exits 1 if a call failed for another reason than its server dying
  cat target/fleet-change.json
  kill "$c"
  wait "$a" "$c" 2> /dev/null || true
done
