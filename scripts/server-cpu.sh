#!/usr/bin/env bash
# Server CPU per call against the floor, interleaved rounds:
#   scripts/server-cpu.sh [clients=16] [secs=5] [rounds=3]
# Each round loads, one after the other, (1) a release `game_server` with `clients` (16)
# `game_client` processes keeping 16 calls in flight each, and (2) the bare tokio UDP echo
# server of `peers/` (one `recv_from` and one `send_to` per datagram) with as many
# `grainwire-peers echo-load` processes keeping 16 datagrams in flight each, `secs` (5) seconds
# each. For each: the server's CPU (user and system, from /proc) per call or echo answered
# and, where `perf` may count them, its system calls and context switches per call or echo.
# Prints one JSON line per run, then the medians of both and their ratio (grainwire / echo).
# SERVER_BIN runs another game_server binary (an earlier build, say); CLIENT_BIN another
# game_client (the same build's, when the wire changed in between); SERVER_ARGS adds flags;
# SHARDS=N runs `game_server --shards N` (N servers in its process, on ports port..port+N-1)
# and gives every client all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-16}
secs=${2:-5}
rounds=${3:-3}
cargo build -q --release --examples
cargo build -q --release --manifest-path peers/Cargo.toml
bin=target/release/examples
peers=peers/target/release/grainwire-peers
server_bin=${SERVER_BIN:-$bin/game_server}
client_bin=${CLIENT_BIN:-$bin/game_client}
port=7961
hz=$(getconf CLK_TCK)
events=context-switches
for s in recvfrom recvmsg recvmmsg sendto sendmsg sendmmsg epoll_wait futex; do
  events+=",syscalls:sys_enter_$s"
done
have_perf=0
if command -v perf > /dev/null && perf stat -e "$events" -o /dev/null -- true 2> /dev/null; then
  have_perf=1
fi
out=target/server-cpu
mkdir -p "$out"
server=
trap '[ -n "$server" ] && kill $server 2> /dev/null || true' EXIT

# run KIND ROUND: loads the server started as $server, writes $out/KIND-ROUND.json.
run() {
  local kind=$1 round=$2 perf_pid= pids=()
  sleep 0.5
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$server/stat")
  if [ "$have_perf" = 1 ]; then
    perf stat -x, -e "$events" -p "$server" -o "$out/perf.csv" 2> /dev/null &
    perf_pid=$!
  fi
  for i in $(seq "$clients"); do
    if [ "$kind" = grainwire ]; then
      "$client_bin" "${connect[@]}" --calls 100000000 --concurrency 16 \
        --keys 1024 --secs "$secs" > "$out/client-$i.json" 2> /dev/null &
    else
      "$peers" echo-load "127.0.0.1:$port" 16 "$secs" > "$out/client-$i.json" &
    fi
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$server/stat")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2> /dev/null || true
    wait "$perf_pid" 2> /dev/null || true
  else
    rm -f "$out/perf.csv"
  fi
  kill "$server" 2> /dev/null || true
  wait "$server" 2> /dev/null || true
  server=
  python3 - "$kind" "$round" "$clients" "$((u1 - u0))" "$((s1 - s0))" "$hz" "$out" <<'PY'
import json, os, sys
kind, rnd, clients, ut, st, hz, out = sys.argv[1:]
clients, ut, st, hz = int(clients), int(ut), int(st), int(hz)
ok = sum(json.load(open(f"{out}/client-{i}.json"))["ok"] for i in range(1, clients + 1))
per = lambda x: round(x / ok, 3) if ok else None
r = {"server": kind, "round": int(rnd), "answered": ok,
     "user_us": per(ut / hz * 1e6), "sys_us": per(st / hz * 1e6),
     "cpu_us": per((ut + st) / hz * 1e6)}
if os.path.exists(f"{out}/perf.csv"):
    counts = {}
    for line in open(f"{out}/perf.csv"):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2].replace("syscalls:sys_enter_", "")] = int(f[0])
    r["context_switches"] = per(counts.pop("context-switches", 0))
    r["syscalls"] = per(sum(counts.values()))
    r["by_syscall"] = {k: per(v) for k, v in counts.items() if v}
print(json.dumps(r))
open(f"{out}/{kind}-{rnd}.json", "w").write(json.dumps(r))
PY
}

shards=${SHARDS:-1}
connect=()
for s in $(seq 0 $((shards - 1))); do connect+=(--connect "127.0.0.1:$((port + s))"); done
shard_args=()
[ "$shards" -gt 1 ] && shard_args=(--shards "$shards")
for round in $(seq "$rounds"); do
  "$server_bin" --bind "127.0.0.1:$port" "${shard_args[@]}" ${SERVER_ARGS:-} > /dev/null 2>&1 &
  server=$!
  run grainwire "$round"
  "$peers" echo-server "127.0.0.1:$port" &
  server=$!
  run echo "$round"
done

python3 - "$rounds" "$out" <<'PY'
import json, statistics, sys
rounds, out = int(sys.argv[1]), sys.argv[2]
def med(kind, key):
    v = [json.load(open(f"{out}/{kind}-{r}.json")).get(key) for r in range(1, rounds + 1)]
    v = [x for x in v if x is not None]
    return round(statistics.median(v), 3) if v else None
summary = {}
for kind in ("grainwire", "echo"):
    summary[kind] = {k: med(kind, k) for k in ("cpu_us", "user_us", "sys_us", "syscalls", "context_switches")}
g, e = summary["grainwire"]["cpu_us"], summary["echo"]["cpu_us"]
summary["ratio_cpu"] = round(g / e, 3) if g and e else None
print(json.dumps({"median_of": rounds, **summary}))
PY
