#!/usr/bin/env bash
# Helm reads only files inside the chart, so the chart carries copies of
# dashboards/alerts.yaml (files/alerts.yaml, rendered as the PrometheusRule)
# and of dashboards/*.json (files/dashboards/, rendered as the Grafana
# dashboard ConfigMap). This script refreshes the copies; with --check it
# changes nothing and exits 1 if a copy differs from its source, is missing,
# or has no source any more (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
[ "${1:-}" = "--check" ] && check=1

chart=helm/bouncer/files
pairs=()
[ -f dashboards/alerts.yaml ] && pairs+=("dashboards/alerts.yaml:$chart/alerts.yaml")
shopt -s nullglob
for f in dashboards/*.json; do
  pairs+=("$f:$chart/dashboards/$(basename "$f")")
done

drift=0
for pair in "${pairs[@]}"; do
  src=${pair%%:*} dst=${pair#*:}
  if cmp -s "$src" "$dst"; then
    continue
  fi
  if [ $check = 1 ]; then
    echo "drift: $dst differs from $src; run scripts/sync-chart-files.sh" >&2
    diff -u "$dst" "$src" 2>/dev/null | head -20 >&2 || true
    drift=1
  else
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
    echo "copied $src -> $dst"
  fi
done

# Copies whose source is gone.
for dst in "$chart"/alerts.yaml "$chart"/dashboards/*.json; do
  [ -e "$dst" ] || continue
  case $dst in
    "$chart"/alerts.yaml) src=dashboards/alerts.yaml ;;
    *) src=dashboards/$(basename "$dst") ;;
  esac
  [ -e "$src" ] && continue
  if [ $check = 1 ]; then
    echo "drift: $dst has no source $src; run scripts/sync-chart-files.sh" >&2
    drift=1
  else
    rm "$dst"
    echo "removed $dst ($src is gone)"
  fi
done

if [ $check = 1 ]; then
  [ $drift = 0 ] && echo "chart copies of dashboards/ are up to date (${#pairs[@]} files)"
  exit $drift
fi
