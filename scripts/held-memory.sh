#!/usr/bin/env bash
# How well the server's accounting of received data it holds (`receive_held`, what its memory
# bounds use) matches its real memory growth, for every shape of held data an attacker can
# make: reliable messages of 1 byte and of 1,000 bytes behind a gap, chunks of 1 MiB messages
# sent last first, partial unreliable messages; plain, and with tokens (KEY_FILE=F: the server
# requires them and the attacker mints valid ones, so its packets are protected).
#   scripts/held-memory.sh
# Prints one markdown row per shape: the server's RSS growth (VmRSS after the attack minus
# before), what it accounted (receive_held, from its --stats-every line), and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --examples
bin=target/release/examples
port=7990
keyed=()
armed=()
if [ -n "${KEY_FILE:-}" ]; then keyed=(--key-file "$KEY_FILE"); armed=(--key-file "$KEY_FILE"); fi
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2> /dev/null || echo 0; }
echo "| shape | sessions | RSS growth | accounted (receive_held) | RSS / accounted |"
echo "|---|---:|---:|---:|---:|"
run() {
  local name=$1 sessions=$2
  shift 2
  port=$((port + 1))
  "$bin/game_server" --bind "127.0.0.1:$port" --stats-every 0.2 "${keyed[@]}" > /dev/null 2> target/held-stats.log &
  local server=$!
  sleep 0.5
  local base
  base=$(kib "$server" VmRSS)
  timeout 120 "$bin/attack" --target "127.0.0.1:$port" --bind 127.0.0.3 "${armed[@]}" "$@" > /dev/null || true
  sleep 0.5
  local now held
  now=$(kib "$server" VmRSS)
  held=$(grep -o 'receive_held: [0-9]*' target/held-stats.log | tail -1 | awk '{print $2}')
  kill -9 "$server" 2> /dev/null || true
  wait "$server" 2> /dev/null || true
  python3 - "$name" "$sessions" "$base" "$now" "${held:-0}" <<'PY'
import sys
name, sessions, base, now, held = sys.argv[1:]
growth = (int(now) - int(base)) * 1024
held = int(held)
ratio = f"{growth / held:.2f}" if held else "-"
print(f"| {name} | {sessions} | {growth / 2**20:.1f} MiB | {held / 2**20:.1f} MiB | {ratio} |")
PY
}
run "reliable 1-byte messages behind a gap" 8 gap --conns 8 --body 1 --per-stream 4000
run "reliable 1,000-byte messages behind a gap" 8 gap --conns 8 --body 1000 --per-stream 32
run "chunks of 1 MiB messages that never complete" 1 chunks --count 20000 --incomplete
run "the last chunk of ever new reliable messages" 1 partials --count 4095 --reliable
run "the last chunk of ever new unreliable messages" 1 partials --count 200000
