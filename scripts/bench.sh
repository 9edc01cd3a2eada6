#!/usr/bin/env bash
# Runs the decision benchmarks (benches/decide.rs, criterion) RUNS times and
# the reload-under-load measurement (benches/reload.rs) once, then prints the
# median of each criterion figure across runs. Method and results:
# BENCHMARKS.md. About 5 minutes on 2 cores with RUNS=3 (the default);
# `scripts/bench.sh --quick` runs the decide bench once with shorter phases.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
measure=3
reload_secs=${RELOAD_BENCH_SECS:-2}
if [[ "${1:-}" == "--quick" ]]; then
    runs=1
    measure=2
    reload_secs=1
fi
target=${CARGO_TARGET_DIR:-target}
out="$target/bench-summary"
mkdir -p "$out"
rm -f "$out"/decide-*.tsv

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --bench decide --bench reload --no-run 2>&1 | grep -E '^(error|warning)' || true

for run in $(seq 1 "$runs"); do
    echo "decide bench, run $run of $runs"
    cargo bench --bench decide -- --warm-up-time 1 --measurement-time "$measure" --noplot \
        >"$out/decide-$run.log" 2>&1 || { cat "$out/decide-$run.log"; exit 1; }
    grep '^fixture' "$out/decide-$run.log" | sed 's/^/  /'
    # Criterion keeps each benchmark's latest estimates under target/criterion.
    python3 - "$target/criterion" >"$out/decide-$run.tsv" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
for bench in sorted(root.glob("*/*/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    elements = meta["throughput"]["Elements"]
    ns = est["median"]["point_estimate"] / elements
    print(f"{meta['group_id']}\t{meta['value_str'] or meta['function_id']}\t{ns:.1f}")
EOF
done

echo
echo "criterion medians, median of $runs run(s) (load average now: $(cut -d' ' -f1-3 /proc/loadavg)):"
python3 - "$out"/decide-*.tsv <<'EOF'
import statistics, sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path):
        group, name, ns = line.rstrip("\n").split("\t")
        rows.setdefault((group, name), []).append(float(ns))
order = {"decide": 0, "parse": 1, "parse_decide": 2, "outputs": 3, "linear_scan": 4}
def key(k):
    group, name = k
    return (order.get(group, 9), int(name) if name.isdigit() else 0, name)
print(f"| {'bench':<22} | {'rules':>7} | {'ns/event':>10} | {'events/s':>12} | runs (ns/event) |")
print(f"|{'-'*24}|{'-'*9}|{'-'*12}|{'-'*14}|-----------------|")
for (group, name) in sorted(rows, key=key):
    values = rows[(group, name)]
    ns = statistics.median(values)
    rate = 1e9 / ns
    rate_s = f"{rate/1e6:.2f} M" if rate >= 1e6 else (f"{rate/1e3:.1f} k" if rate >= 1e3 else f"{rate:.0f}")
    rules = name if name.isdigit() else "-"
    bench = group if name.isdigit() else f"{group}/{name}"
    runs = ", ".join(f"{v:.0f}" for v in values)
    print(f"| {bench:<22} | {rules:>7} | {ns:>10.1f} | {rate_s:>12} | {runs} |")
target = rows.get(("decide", "100000"))
if target:
    rate = 1e9 / statistics.median(target)
    verdict = "met" if rate >= 2e6 else "NOT met"
    print(f"\ntarget (2 M decisions/s on one core at 100,000 rules): {verdict} ({rate/1e6:.2f} M/s)")
EOF

echo
echo "reload bench (RELOAD_BENCH_SECS=$reload_secs per phase):"
RELOAD_BENCH_SECS=$reload_secs cargo bench --bench reload 2>/dev/null | grep -v '^$'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
