#!/usr/bin/env bash
# Server CPU per call: one release `game_server`, `clients` (16) `game_client` processes with
# 16 calls in flight each, for `secs` (5) seconds; the server's CPU time (utime + stime from
# /proc) over the run divided by the calls answered (the clients' `ok`):
#   scripts/server-cpu.sh [clients=16] [secs=5]
# SERVER_BIN runs another game_server binary (an earlier build, say); CLIENT_BIN another
# game_client (the same build's, when the wire changed in between).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-16}
secs=${2:-5}
cargo build -q --release --examples
bin=target/release/examples
server_bin=${SERVER_BIN:-$bin/game_server}
client_bin=${CLIENT_BIN:-$bin/game_client}
port=7961
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
"$server_bin" --bind "127.0.0.1:$port" > /dev/null 2>&1 &
server=$!
trap 'kill $server 2> /dev/null || true' EXIT
sleep 0.5
before=$(ticks "$server")
pids=()
for i in $(seq "$clients"); do
  "$client_bin" --connect "127.0.0.1:$port" --calls 100000000 --concurrency 16 \
    --keys 1024 --secs "$secs" > "target/server-cpu-$i.json" 2> /dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
after=$(ticks "$server")
python3 - "$clients" "$((after - before))" "$hz" <<'PY'
import json, sys
clients, ticks, hz = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ok = sum(json.load(open(f"target/server-cpu-{i}.json"))["ok"] for i in range(1, clients + 1))
cpu = ticks / hz
print(json.dumps({"clients": clients, "calls": ok, "server_cpu_s": cpu,
                  "server_cpu_us_per_call": round(cpu * 1e6 / ok, 2) if ok else None}))
PY
