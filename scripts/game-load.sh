#!/usr/bin/env bash
# A game's load at 1,000 / 5,000 / 10,000 players (or the counts given): `bench game` against a
# `game_server` it starts in a process of its own, one JSON line each.
#   scripts/game-load.sh [players ...]      SECS=10 UPDATE_HZ=30 CALL_HZ=1 by default
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --example bench --example game_server
secs=${SECS:-10}
for players in "${@:-1000 5000 10000}"; do
  for n in $players; do
    target/release/examples/bench game --players "$n" --update-hz "${UPDATE_HZ:-30}" \
      --call-hz "${CALL_HZ:-1}" --secs "$secs"
  done
done
