#!/usr/bin/env bash
# The Grafana dashboard (dashboards/bouncer.json) and the alert rules
# (dashboards/alerts.yaml) against a real Prometheus scraping a real bouncer
# on the real broker, as CI runs it (issue 5):
#
#   - static: the dashboard's variables and datasource, rates over
#     $__rate_interval, and only metrics bouncer exports (src/metrics.rs)
#     or `up` in any query; promtool check rules / test rules;
#   - a real Prometheus (scrape interval 1 s, alerts.yaml loaded) scrapes
#     `bouncer run` on fresh topics while events flow for about a minute,
#     with a scripted trigger for each rare condition: an API change, an
#     invalid control record, a broken rule file (reload metric 0, alert
#     pending, then fixed), a produce error, invalid events, a rebalance (a
#     second instance joins, the revoked partition's lag series disappears,
#     then it leaves on SIGTERM);
#   - every panel's every query, Grafana variables substituted
#     ($__rate_interval -> 30s, template variables -> .*, label_values()
#     through the label API), must parse and return data; every alert
#     expression must parse; each panel's result count is printed.
#
# Tools: Prometheus and promtool from Debian's prometheus package, extracted
# (apt-get download + dpkg-deb -x, no service installed or started) into
# ~/.cache/bouncer/promtool, shared with scripts/helm-check.sh; PyYAML from
# the system, helm-check's virtualenv or a small virtualenv of its own.
# Needs the broker of scripts/kafka.sh running (as scripts/api-fuzz.sh does;
# it waits up to a minute for one that is restarting). Everything listens on
# 127.0.0.1; every process the check starts is stopped on exit. The scenario takes about 90 s (bounded: 220 s).
#
# Usage: scripts/prometheus-check.sh [--keep] [--traffic-seconds N] [--rate N]
#   (arguments go to scripts/prometheus_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BOUNCER_CACHE:-$HOME/.cache/bouncer}
started=$SECONDS
step() { printf -- '--- %s (%ss)\n' "$1" "$((SECONDS - started))"; }

step "tools"
PROM_ROOT=$CACHE/promtool
PROMETHEUS=$PROM_ROOT/usr/bin/prometheus
PROMTOOL=$PROM_ROOT/usr/bin/promtool
if [ ! -x "$PROMETHEUS" ] || [ ! -x "$PROMTOOL" ]; then
  command -v apt-get >/dev/null || { echo "prometheus-check: needs apt-get for Debian's prometheus package" >&2; exit 1; }
  echo "extracting prometheus and promtool from Debian's prometheus package (no service installed)"
  deb_dir=$(mktemp -d)
  if (cd "$deb_dir" && { apt-get download prometheus >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }); then
    mkdir -p "$PROM_ROOT" && dpkg-deb -x "$deb_dir"/prometheus_*.deb "$PROM_ROOT"
  fi
  rm -rf "$deb_dir"
  if [ ! -x "$PROMETHEUS" ] || [ ! -x "$PROMTOOL" ]; then
    echo "prometheus-check: could not get Debian's prometheus package" >&2
    exit 1
  fi
fi
"$PROMETHEUS" --version 2>&1 | head -1

PY=
for candidate in python3 "$CACHE/helm-check-venv/bin/python" "$CACHE/prometheus-check-venv/bin/python"; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "installing PyYAML into $CACHE/prometheus-check-venv"
  rm -rf "$CACHE/prometheus-check-venv"
  python3 -m venv "$CACHE/prometheus-check-venv"
  "$CACHE/prometheus-check-venv/bin/pip" install --quiet --disable-pip-version-check 'pyyaml>=6,<7'
  PY=$CACHE/prometheus-check-venv/bin/python
fi

step "cargo build --locked"
cargo build --locked --quiet
BOUNCER=$PWD/target/debug/bouncer

step "broker"
# The broker is shared (other test runs may restart it): wait for it a
# little, never start or stop it here.
eval "$(scripts/kafka.sh env)"
for _ in $(seq 1 30); do
  scripts/kafka.sh status >/dev/null 2>&1 && break
  sleep 2
done
scripts/kafka.sh status || { echo "prometheus-check: no broker on $KAFKA_BOOTSTRAP; run scripts/kafka.sh start" >&2; exit 1; }

py_pid=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    wait "$py_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "scenario (scripts/prometheus_check.py)"
"$PY" scripts/prometheus_check.py \
  --bouncer "$BOUNCER" --prometheus "$PROMETHEUS" --promtool "$PROMTOOL" \
  --bootstrap "$KAFKA_BOOTSTRAP" --setup-seconds "$((SECONDS - started))" "$@" &
py_pid=$!
status=0
wait "$py_pid" || status=$?
py_pid=
exit "$status"
