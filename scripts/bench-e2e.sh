#!/usr/bin/env bash
# The end-to-end benchmark (issue #8; benches/e2e.rs): bouncer beside a
# pass-through baseline on a real local broker, in both delivery modes.
# Builds bouncer and the bench, starts its own broker (not the tests' one),
# runs the driver, prints the table and stops the broker it started.
# Method and figures: BENCHMARKS.md. Results: target/bench-summary/e2e-*.
#
# Usage: scripts/bench-e2e.sh [--quick] [--keep-broker] [DRIVER OPTIONS...]
#
#   --quick         200,000 events, short phases, one reload swap, a
#                   400,000-event memory check: under 3 minutes
#   --keep-broker   leave the broker (and its data) running afterwards
#   --wait-idle     first wait (up to $WAIT_IDLE_MAX s, default 900) for three
#                   consecutive 5-second windows with the machine at least 85%
#                   idle: other engineers' builds and tests skew every figure
#   anything else goes to the driver; see `cargo bench --bench e2e -- --help`:
#   --events N, --memory-events N, --modes alo,eos, --runs N,
#   --latency-secs S, --rate R, --reload-swaps K, --partitions P, ...
#
# Environment:
#   RUNS=N            repeats of the drain and latency phases (medians reported)
#   EVENTS=N          backlog per drain (default 1,000,000; --quick 200,000)
#   MEMORY_EVENTS=N   backlog of the memory check (default 5,000,000)
#   MODES=alo,eos     delivery modes to measure
#   KAFKA_DIR, KAFKA_PORT, KAFKA_CONTROLLER_PORT   the bench's broker
#                     (default /tmp/bouncer-bench-kafka on 29092/29093)
#   KAFKA_HEAP_OPTS   the broker's heap (default -Xmx1g -Xms512m)
set -euo pipefail
cd "$(dirname "$0")/.."

export KAFKA_DIR="${KAFKA_DIR:-/tmp/bouncer-bench-kafka}"
export KAFKA_PORT="${KAFKA_PORT:-29092}"
export KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-29093}"
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1g -Xms512m}"

keep_broker=
wait_idle=
args=()
for arg in "$@"; do
    case "$arg" in
        --keep-broker) keep_broker=1 ;;
        --wait-idle) wait_idle=1 ;;
        *) args+=("$arg") ;;
    esac
done
[[ -n "${RUNS:-}" ]] && args+=(--runs "$RUNS")
[[ -n "${EVENTS:-}" ]] && args+=(--events "$EVENTS")
[[ -n "${MEMORY_EVENTS:-}" ]] && args+=(--memory-events "$MEMORY_EVENTS")
[[ -n "${MODES:-}" ]] && args+=(--modes "$MODES")

target=${CARGO_TARGET_DIR:-target}
out="$target/bench-summary"
mkdir -p "$out"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(free -g | awk '/^Mem:/ {print $2}') GiB"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
echo "disk free in /tmp: $(df -h /tmp | awk 'NR == 2 {print $4}')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "building bouncer and the bench..."
cargo build --release 2>&1 | grep -E '^(error|warning)' || true
[[ -x "$target/release/bouncer" ]] || { echo "no $target/release/bouncer"; exit 1; }
bench=$(cargo bench --bench e2e --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')
[[ -x "$bench" ]] || { cargo bench --bench e2e --no-run; exit 1; }

# Percent of the machine idle over the next 5 seconds, from /proc/stat.
idle_pct() {
    local -a a b
    read -r -a a </proc/stat
    sleep 5
    read -r -a b </proc/stat
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    echo $(((100 * (b[4] - a[4] + b[5] - a[5])) / (total > 0 ? total : 1)))
}
if [[ -n "$wait_idle" ]]; then
    deadline=$((SECONDS + ${WAIT_IDLE_MAX:-900}))
    quiet=0
    while ((quiet < 3 && SECONDS < deadline)); do
        idle=$(idle_pct)
        if ((idle >= 85)); then quiet=$((quiet + 1)); else quiet=0; fi
        echo "waiting for an idle machine: ${idle}% idle ($quiet of 3 quiet windows)"
    done
    ((quiet >= 3)) || echo "the machine never went quiet; running anyway"
fi

started_broker=
if ! scripts/kafka.sh status >/dev/null 2>&1; then
    scripts/kafka.sh start
    started_broker=1
fi
eval "$(scripts/kafka.sh env)"
# shellcheck disable=SC2317 # called by the trap
stop_broker() {
    if [[ -n "$started_broker" && -z "$keep_broker" ]]; then
        # The bench's own data directory: delete it too (gigabytes of topics).
        scripts/kafka.sh reset >/dev/null 2>&1 || scripts/kafka.sh stop
    fi
}
trap stop_broker EXIT

log="$out/e2e-run.log"
echo "running $bench ${args[*]:-} (progress: $log)"
status=0
"$bench" --bootstrap "$KAFKA_BOOTSTRAP" --bouncer "$target/release/bouncer" --out "$out" "${args[@]}" \
    2> >(tee "$log" >&2) || status=$?
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"
