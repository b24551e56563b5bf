#!/usr/bin/env bash
# Idle sessions on one release `game_server`, and a busy client beside them:
#   scripts/scale.sh [sessions=10000] [rounds=3]
# The idle sessions come from `attack idle` (hand-driven sessions from 127.1.x.y, 64 per
# address, kept alive with a keepalive ping each second, as idle game clients do). Measures the
# server's memory (RSS) before and with them, its CPU over 10 s with them idle, and the p50 of a
# busy `game_client` (16 calls in flight) without and with them, interleaved, `rounds` times.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
rounds=${2:-3}
cargo build -q --release --examples
bin=target/release/examples
# SERVER_BIN runs another game_server binary (an earlier build, say) with the same sessions.
server_bin=${SERVER_BIN:-$bin/game_server}
port=7990
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
"$server_bin" --bind "127.0.0.1:$port" --max-connections $((n + 100)) > /dev/null 2>&1 &
server=$!
trap 'kill $server $idle 2> /dev/null || true' EXIT
idle=
sleep 0.5
p50() { "$bin/game_client" --connect "127.0.0.1:$port" --concurrency 16 --secs 5 2> /dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["p50_us"])'; }
without=()
for _ in $(seq "$rounds"); do without+=("$(p50)"); done
base=$(kib "$server" VmRSS)
fifo=$(mktemp -u)
mkfifo "$fifo"
"$bin/attack" --target "127.0.0.1:$port" idle --count "$n" --secs 100000 > "$fifo" 2> /dev/null &
idle=$!
read -r ready < "$fifo"
echo "$ready" >&2
with_rss=$(kib "$server" VmRSS)
sleep 2
cpu0=$(ticks "$server")
sleep 10
cpu1=$(ticks "$server")
with=()
for _ in $(seq "$rounds"); do with+=("$(p50)"); done
# Interleave once more: without (after the idle sessions are gone), then with.
kill "$idle"
wait "$idle" 2> /dev/null || true
rm -f "$fifo"
echo "{\"idle_sessions\":$n,\"server_rss_before_kib\":$base,\"server_rss_with_kib\":$with_rss,\"server_cpu_idle_10s\":$(echo "scale=2; ($cpu1 - $cpu0) / $hz" | bc),\"busy_p50_us_without\":[$(IFS=,; echo "${without[*]}")],\"busy_p50_us_with\":[$(IFS=,; echo "${with[*]}")]}"
