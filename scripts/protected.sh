#!/usr/bin/env bash
# What packet protection costs: `bench latency` (pinned to one core) and `bench throughput`,
# plain and `--protected`, interleaved N times (default 10); prints the medians.
#   scripts/protected.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
cargo build -q --release --example bench
bench=target/release/examples/bench
out=target/protected.jsonl
: > "$out"
for _ in $(seq "$n"); do
  for p in "" --protected; do
    # shellcheck disable=SC2086 # $p is one flag or nothing
    echo "{\"protected\":\"$p\",\"run\":$(taskset -c 0 "$bench" latency $p)}" >> "$out"
    # shellcheck disable=SC2086
    echo "{\"protected\":\"$p\",\"run\":$("$bench" throughput $p)}" >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(prot, mode, key):
    return statistics.median(r["run"][key] for r in rows if r["protected"] == prot and r["run"]["mode"] == mode)
for mode, key, unit in [("latency", "p50_us", "µs"), ("latency", "p99_us", "µs"), ("throughput", "calls_per_sec", "calls/s")]:
    plain, prot = med("", mode, key), med("--protected", mode, key)
    print(f"{mode} {key}: plain {plain:.1f} {unit}, protected {prot:.1f} {unit} ({(prot / plain - 1) * 100:+.1f} %)")
# Each protected run against the plain run just before it (the machine drifts between states).
for mode, key in [("latency", "p50_us"), ("throughput", "calls_per_sec")]:
    a = [r["run"][key] for r in rows if r["protected"] == "" and r["run"]["mode"] == mode]
    b = [r["run"][key] for r in rows if r["protected"] == "--protected" and r["run"]["mode"] == mode]
    ratios = sorted(y / x for x, y in zip(a, b))
    print(f"{mode} {key} paired ratio protected/plain: median {statistics.median(ratios):.3f} "
          f"(runs: {[round(x, 1) for x in a]} vs {[round(y, 1) for y in b]})")
PY
