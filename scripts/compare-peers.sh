#!/usr/bin/env bash
# The `bench` example beside the other stacks of `peers/` (bare tokio UDP, tarpc, quinn: a crate
# of our own outside the workspace) in the same run, interleaved, and the medians.
#   scripts/compare-peers.sh [rounds=3]
# Each round runs, for grainwire and each peer: latency pinned to CPU 0 (taskset), latency
# unpinned, and throughput unpinned (32-byte payload, 64 in flight). Prints a markdown table
# of medians (min–max) and the p50 ratios to `udp`. Raw lines go to target/compare-peers.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
peers=(udp tarpc quinn)
cargo build -q --release --example bench
cargo build -q --release --manifest-path peers/Cargo.toml
ours=target/release/examples/bench
PEERS_BIN=peers/target/release/grainwire-peers
out=target/compare-peers.jsonl
: > "$out"
tag() { python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), pin=sys.argv[1]))) for l in sys.stdin if l.startswith("{")]' "$1"; }
for _ in $(seq "$rounds"); do
  { taskset -c 0 "$ours" latency; for p in "${peers[@]}"; do taskset -c 0 "$PEERS_BIN" "$p" latency; done; } | tag pinned >> "$out"
  { "$ours" latency; for p in "${peers[@]}"; do "$PEERS_BIN" "$p" latency; done; } | tag unpinned >> "$out"
  { "$ours" throughput; for p in tarpc quinn; do "$PEERS_BIN" "$p" throughput; done; } | tag unpinned >> "$out"
done
python3 - "$out" <<'PY'
import json, statistics, sys
from collections import defaultdict
v = defaultdict(list)
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["mode"] == "latency":
        for m in ("p50_us", "p99_us"):
            v[(r["pin"], r["peer"], m)].append(r[m])
    else:
        v[("throughput", r["peer"], "calls_per_sec")].append(r["calls_per_sec"])
def cell(k, fmt="{:.1f}"):
    x = v.get(k)
    return "-" if not x else f"{fmt.format(statistics.median(x))} ({fmt.format(min(x))}–{fmt.format(max(x))})"
print("| peer | pinned p50 µs | pinned p99 µs | unpinned p50 µs | unpinned p99 µs | calls/s, 64 in flight |")
print("|---|---:|---:|---:|---:|---:|")
for p in ["grainwire", "udp", "tarpc", "quinn"]:
    print(f"| {p} | " + " | ".join([cell(("pinned", p, "p50_us")), cell(("pinned", p, "p99_us")),
        cell(("unpinned", p, "p50_us")), cell(("unpinned", p, "p99_us")),
        cell(("throughput", p, "calls_per_sec"), "{:,.0f}")]) + " |")
for pin in ("pinned", "unpinned"):
    g = statistics.median(v[(pin, "grainwire", "p50_us")])
    print(f"\n{pin} p50 ratios: " + ", ".join(f"{g / statistics.median(v[(pin, p, 'p50_us')]):.2f}x {p}" for p in ["udp", "tarpc", "quinn"]))
g = statistics.median(v[("throughput", "grainwire", "calls_per_sec")])
print("throughput ratios: " + ", ".join(f"{g / statistics.median(v[('throughput', p, 'calls_per_sec')]):.2f}x {p}" for p in ["tarpc", "quinn"]))
PY
