#!/usr/bin/env bash
# Every attack of the `attack` example against a fresh release `game_server` (default config),
# with a well-behaved probe client (`game_client`, one call at a time, one call per ms) beside it:
#   scripts/attacks.sh [attack ...]
# Prints one markdown row per attack: what the attacker achieved, the server's peak memory
# growth (VmHWM minus the RSS before the attack, from /proc), the server's CPU time during the
# attack, and the probe's latency and failures. Raw JSON lines go to target/attacks.jsonl.
# SERVER_BIN runs another game_server binary (an earlier build, say) against the same attacks.
# KEY_FILE=F runs the server with `--key-file F` (connect tokens required, packets protected)
# and the probe with a token minted from it; the attacker has none, unless ATTACKER_TOKENS=1:
# then it mints a valid token per session (a malicious player with accounts).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --examples
bin=target/release/examples
server_bin=${SERVER_BIN:-$bin/game_server}
out=target/attacks.jsonl
: > "$out"
port=7931
all=(none zero-window no-ack big-answers empty-chunks chunks partials gap gap64 activations slots busy junk junk1000)
keyed=()
armed=()
if [ -n "${KEY_FILE:-}" ]; then keyed=(--key-file "$KEY_FILE"); fi
if [ -n "${ATTACKER_TOKENS:-}" ]; then armed=(--key-file "$KEY_FILE"); fi
attacks=("${@:-${all[@]}}")
# 0 once the process is gone (a server that crashed under an attack).
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2> /dev/null || echo 0; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2> /dev/null || echo 0; }
hz=$(getconf CLK_TCK)
echo "| attack | attacker | server memory growth | server CPU | probe p50 / p99 / max | probe failed |"
echo "|---|---|---:|---:|---:|---:|"
for a in "${attacks[@]}"; do
  port=$((port + 1))
  "$server_bin" --bind "127.0.0.1:$port" "${keyed[@]}" > /dev/null 2>&1 &
  server=$!
  sleep 0.5
  base=$(kib "$server" VmRSS)
  cpu0=$(ticks "$server")
  probe_secs=15
  case "$a" in zero-window | no-ack) probe_secs=40 ;; esac
  "$bin/game_client" --connect "127.0.0.1:$port" "${keyed[@]}" --secs "$probe_secs" --keys 64 --pace-us 1000 \
    > target/probe.json 2> /dev/null &
  probe=$!
  sleep 0.5
  args=("$a")
  case "$a" in
    zero-window | no-ack) args+=(--count 3000000) ;;
    gap64) args=(gap --conns 64) ;;
    junk1000) args=(junk --ips 1000) ;;
    slots) args+=(--secs 10) ;;
  esac
  if [ "$a" = none ]; then
    sleep 10
    attacker='{}'
  else
    attacker=$(timeout 120 "$bin/attack" --target "127.0.0.1:$port" --bind 127.0.0.3 "${armed[@]}" "${args[@]}" | tail -1) || true
    case "$attacker" in "{"*) ;; *) attacker='{"result":"none: the attack did not finish in 120 s"}' ;; esac
  fi
  cpu1=$(ticks "$server")
  peak=$(kib "$server" VmHWM)
  if ! kill -0 "$server" 2> /dev/null; then
    attacker="{\"server\":\"died during the attack\",\"attacker\":$attacker}"
    peak=$base
  fi
  wait "$probe" || true
  kill -9 "$server" 2> /dev/null || true
  wait "$server" 2> /dev/null || true
  probe_json=$(cat target/probe.json)
  echo "{\"attack\":\"$a\",\"attacker\":$attacker,\"server_base_kib\":$base,\"server_peak_kib\":$peak,\"server_cpu_s\":$(echo "scale=2; ($cpu1 - $cpu0) / $hz" | bc),\"probe\":$probe_json}" >> "$out"
  python3 - "$a" "$attacker" "$base" "$peak" "$cpu0" "$cpu1" "$hz" "$probe_json" <<'PY'
import json, sys
a, attacker, base, peak, c0, c1, hz, probe = sys.argv[1:]
at = json.loads(attacker)
p = json.loads(probe)
keep = {k: v for k, v in at.items() if k not in ("attack",)}
growth = (int(peak) - int(base)) / 1024
cpu = (float(c1) - float(c0)) / float(hz)
print(f"| `{a}` | {json.dumps(keep, separators=(',', ':'))} | {growth:.1f} MiB | {cpu:.2f} s | "
      f"{p['p50_us'] / 1000:.2f} / {p['p99_us'] / 1000:.2f} / {p['max_us'] / 1000:.1f} ms | "
      f"{p['failed']} of {p['calls']} |")
PY
done
