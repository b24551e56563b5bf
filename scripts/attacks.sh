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
#
# The attacks of issue 19 (one address, or many, against the others): `watch` (24 sessions
# from one address flood WATCHes and trickle acknowledgements), `answers` (40 sessions ask
# for ~1 MB answers and trickle), `hello-flood` (HELLOs from 64 ports of the probe's
# own address at 10,000/s, the probe connecting during the flood), `slots64` (4,096 idle sessions from 64
# addresses, then the probe connects), `steal` (KEY_FILE only: the probe's sealed token, as an
# eavesdropper saw it, presented from other ports first and throughout), and `everything`
# (watch, answers, gap64, activations, zero-window, slots and a HELLO flood at once, all from
# the attacker's one address; not in the default list).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --examples
bin=target/release/examples
server_bin=${SERVER_BIN:-$bin/game_server}
out=target/attacks.jsonl
: > "$out"
port=7931
all=(none zero-window no-ack big-answers empty-chunks chunks partials gap gap64 activations slots busy junk junk1000
  watch answers hello-flood slots64)
keyed=()
armed=()
if [ -n "${KEY_FILE:-}" ]; then
  keyed=(--key-file "$KEY_FILE")
  all+=(steal)
fi
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
  probe_after=0 # seconds after the attacker starts; 0: the probe starts first
  attacker_ip=127.0.0.3
  probe_auth=("${keyed[@]}")
  args=("$a")
  case "$a" in
    zero-window | no-ack) args+=(--count 3000000) probe_secs=40 ;;
    gap64) args=(gap --conns 64) ;;
    junk1000) args=(junk --ips 1000) ;;
    slots) args+=(--secs 10) ;;
    watch) args+=(--conns 24 --count 80000 --secs 20) probe_secs=60 ;;
    answers) args+=(--conns 40 --asks 12 --secs 20) probe_secs=25 ;;
    hello-flood) args+=(--ports 64 --rate 10000 --secs 15) attacker_ip=127.0.0.1 probe_after=1 probe_secs=12 ;;
    slots64) args=(idle --count 4096 --secs 25) probe_after=10 probe_secs=12 ;;
    everything) probe_secs=45 ;;
    steal)
      "$bin/game_client" --connect "127.0.0.1:$port" --key-file "$KEY_FILE" --client-id 4242 \
        --token-out target/probe-token.hex --calls 1 > /dev/null
      probe_auth=(--token-file target/probe-token.hex)
      args+=(--token-file target/probe-token.hex --conns 8 --secs 15) probe_after=2 probe_secs=12
      ;;
  esac
  probe() {
    "$bin/game_client" --connect "127.0.0.1:$port" "${probe_auth[@]}" --secs "$probe_secs" --keys 64 \
      --pace-us 1000 > target/probe.json 2> target/probe.err &
    probe=$!
  }
  attack() {
    if [ "$a" = everything ]; then
      local pids=() i=0
      for one in "watch --conns 24 --count 80000 --secs 30" "answers --conns 40 --asks 12 --secs 30" \
        "gap --conns 64" "activations" "zero-window --count 3000000" "slots --secs 30" \
        "hello-flood --ports 64 --rate 10000 --secs 30"; do
        i=$((i + 1))
        # shellcheck disable=SC2086 # each entry is an attack and its flags
        timeout 120 "$bin/attack" --target "127.0.0.1:$port" --bind "$attacker_ip" "${armed[@]}" $one \
          2> /dev/null | tail -1 > "target/attacker-$i.json" &
        pids+=($!)
      done
      wait "${pids[@]}" || true
      python3 -c 'import json,sys; print(json.dumps([json.loads(open(f).read() or "{}") for f in sys.argv[1:]]))' \
        target/attacker-[0-9]*.json | python3 -c 'import json,sys; l=json.load(sys.stdin); print(json.dumps({"attacks": [d.get("attack") for d in l]}))' \
        > target/attacker.json
      rm -f target/attacker-[0-9]*.json
      return
    fi
    timeout 120 "$bin/attack" --target "127.0.0.1:$port" --bind "$attacker_ip" "${armed[@]}" "${args[@]}" \
      | tail -1 > target/attacker.json || true
  }
  : > target/attacker.json
  if [ "$a" = none ]; then
    probe
    sleep 10
    echo '{}' > target/attacker.json
  elif [ "$probe_after" = 0 ]; then
    probe
    sleep 0.5
    attack
  else
    attack &
    attacker=$!
    sleep "$probe_after"
    probe
    wait "$attacker" || true
  fi
  attacker=$(cat target/attacker.json)
  case "$attacker" in "{"*) ;; *) attacker='{"result":"none: the attack did not finish in 120 s"}' ;; esac
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
  case "$probe_json" in "{"*) ;; *) probe_json="{\"never_connected\":\"$(tr -d '"\n' < target/probe.err | head -c 200)\"}" ;; esac
  echo "{\"attack\":\"$a\",\"attacker\":$attacker,\"server_base_kib\":$base,\"server_peak_kib\":$peak,\"server_cpu_s\":$(awk -v a="$cpu0" -v b="$cpu1" -v h="$hz" 'BEGIN { printf "%.2f", (b - a) / h }'),\"probe\":$probe_json}" >> "$out"
  python3 - "$a" "$attacker" "$base" "$peak" "$cpu0" "$cpu1" "$hz" "$probe_json" <<'PY'
import json, sys
a, attacker, base, peak, c0, c1, hz, probe = sys.argv[1:]
at = json.loads(attacker)
p = json.loads(probe)
keep = {k: v for k, v in at.items() if k not in ("attack",)}
growth = (int(peak) - int(base)) / 1024
cpu = (float(c1) - float(c0)) / float(hz)
if "calls" in p:
    lat = f"{p['p50_us'] / 1000:.2f} / {p['p99_us'] / 1000:.2f} / {p['max_us'] / 1000:.1f} ms"
    failed = f"{p['failed']} of {p['calls']}"
else:
    lat, failed = "-", f"never connected ({p.get('never_connected', '')})"
print(f"| `{a}` | {json.dumps(keep, separators=(',', ':'))} | {growth:.1f} MiB | {cpu:.2f} s | {lat} | {failed} |")
PY
done
