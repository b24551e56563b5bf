#!/usr/bin/env bash
# Median of N pinned runs of transport_bench latency vs raw tokio UDP, and their ratio.
#   scripts/latency-ratio.sh [runs=5] [cpu=0]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}; cpu=${2:-0}
cargo build -q --release --example transport_bench
bin=target/release/examples/transport_bench
for _ in $(seq "$runs"); do taskset -c "$cpu" "$bin" latency raw-latency; done | python3 -c '
import json, sys, statistics
rows = [json.loads(l) for l in sys.stdin]
ours = [r["p50_us"] for r in rows if r["peer"] == "grainwire-transport"]
raw = [r["p50_us"] for r in rows if r["peer"] == "udp-tokio"]
ratios = [o / r for o, r in zip(ours, raw)]
print(f"p50 grainwire {statistics.median(ours):.1f} us, udp-tokio {statistics.median(raw):.1f} us, ratio median {statistics.median(ratios):.3f} (runs {len(ratios)}: {[round(x, 3) for x in ratios]})")
'
