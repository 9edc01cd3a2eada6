#!/usr/bin/env bash
# The fault campaign (issue #7; tests/fault_campaign.rs): bouncer on the real
# broker, fed 100,000 events while it is SIGKILLed 20 times, the broker is
# restarted twice and members join and leave the group 4 times; then every
# input must have its output (exactly once in exactly-once mode). Prints the
# figures of each mode and exits non-zero if any mode failed.
#
# Usage: scripts/fault-campaign.sh [at-least-once|exactly-once|both]   (default: both)
#
# The broker is scripts/kafka.sh's, with KAFKA_DIR (default, as for
# scripts/test.sh: /tmp/bouncer-test-kafka), KAFKA_PORT and
# KAFKA_CONTROLLER_PORT from the environment; it is started if it is not
# running, and then stopped at the end. The campaign's knobs
# (BOUNCER_FAULT_EVENTS, _KILLS, _SEED, ...) are listed at the top of
# tests/fault_campaign.rs. Each mode takes about 4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-both}" in
    at-least-once | exactly-once) modes=("$1") ;;
    both) modes=(at-least-once exactly-once) ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [at-least-once|exactly-once|both]" >&2
        exit 2
        ;;
esac

scripts/install-deps.sh

export KAFKA_DIR="${KAFKA_DIR:-/tmp/bouncer-test-kafka}"
started=""
if ! scripts/kafka.sh status >/dev/null 2>&1; then
    scripts/kafka.sh start
    started=1
fi
stop_broker() {
    if [[ -n "$started" ]]; then
        scripts/kafka.sh stop >/dev/null 2>&1 || true
    fi
}
trap stop_broker EXIT
# KAFKA_BOOTSTRAP for the test, and KAFKA_DIR/KAFKA_PORT/KAFKA_CONTROLLER_PORT
# for the scripts/kafka.sh restarts it does.
eval "$(scripts/kafka.sh env)"
export KAFKA_BOOTSTRAP

# The debug profile, as scripts/test.sh: CI builds no second profile.
cargo test --locked --test fault_campaign --no-run

logs="$(mktemp -d "${TMPDIR:-/tmp}/bouncer-fault-campaign.XXXXXX")"
failed=()
for mode in "${modes[@]}"; do
    printf '\n=== fault campaign: %s (%s)\n' "$mode" "$(date -u +%H:%M:%S)"
    status=0
    BOUNCER_FAULT_GUARANTEE="$mode" \
        cargo test --locked --test fault_campaign -- --ignored --nocapture 2>&1 |
        tee "$logs/$mode.log" || status=$?
    if [[ $status -ne 0 ]]; then
        failed+=("$mode")
    fi
done

printf '\n=== fault campaign figures\n'
for mode in "${modes[@]}"; do
    line="$(grep -h '^fault campaign summary:' "$logs/$mode.log" | tail -n 1 || true)"
    if [[ -n "$line" ]]; then
        printf '%s\n' "${line#fault campaign summary: }"
    else
        printf 'guarantee=%s: no figures (the campaign stopped early; see %s)\n' "$mode" "$logs/$mode.log"
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'FAILED: %s (logs: %s)\n' "${failed[*]}" "$logs"
    exit 1
fi
printf 'passed: %s\n' "${modes[*]}"
rm -rf "$logs"
