#!/usr/bin/env bash
# Checks the Helm chart (helm/bouncer) offline, as CI runs it:
#
#   - helm lint --strict and helm template for the default values and every
#     example values file, at Kubernetes $KUBE_VERSION; every rendered
#     manifest validated against that release's schemas (kubernetes-validate,
#     strict), ServiceMonitor and PrometheusRule against the
#     prometheus-operator API types (scripts/crd-check);
#   - the rendered pod agrees with bouncer's configuration: rules_dir is where
#     git-sync (or the ConfigMap) puts the rules, probes, ports, Service and
#     ServiceMonitor use http_listen's port, the grace period covers the
#     sender's drain plus shutdown_timeout (scripts/helm_check.py agree), and
#     the checker itself catches a broken pod (mutations below);
#   - the native-sidecar default refuses to render for Kubernetes 1.28 with a
#     clear message; the classic example renders and validates there;
#   - render-time refusals (grace period, exactly-once without StatefulSet,
#     an owned Kafka property);
#   - the named templates, injected by a parent chart (helm/examples);
#   - the Grafana dashboard ConfigMap renders whatever JSON the chart carries
#     and nothing when it carries none;
#   - the chart's copies of dashboards/ have not drifted; promtool checks and
#     unit-tests dashboards/alerts.yaml;
#   - README.md's values table matches values.yaml.
#
# Tools, installed on first use and cached: helm $HELM_VERSION built from
# the Go module proxy into $HOME/go/bin (a few minutes cold);
# kubernetes-validate from PyPI in a virtualenv, crd-check and promtool
# (extracted from Debian's prometheus package, nothing installed) under
# ~/.cache/bouncer.
#
# Usage: scripts/helm-check.sh [--bless-readme]
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.22.0
KUBE_VERSION=${KUBE_VERSION:-1.37.0}
KUBERNETES_VALIDATE_VERSION=1.37.0
CACHE=${BOUNCER_CACHE:-$HOME/.cache/bouncer}
CHART=helm/bouncer
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

started=$SECONDS
step() { printf '\n--- %s (%ss)\n' "$1" "$((SECONDS - started))"; }
fail() { echo "helm-check: FAILED: $*" >&2; exit 1; }
passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }

# ------------------------------------------------------------------ tools
step "tools"
GOBIN_DIR=$(go env GOPATH)/bin
HELM=$GOBIN_DIR/helm
if ! go version -m "$HELM" 2>/dev/null | grep -q "mod[[:space:]]*helm.sh/helm/v3[[:space:]]*$HELM_VERSION"; then
  echo "building helm $HELM_VERSION from the Go module proxy (a few minutes on a cold cache)"
  t0=$SECONDS
  go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "built helm in $((SECONDS - t0))s"
fi
echo "helm: $HELM ($HELM_VERSION)"

VENV=$CACHE/helm-check-venv
if ! "$VENV/bin/python" -c "import kubernetes_validate, yaml, sys; assert kubernetes_validate.__version__ == '$KUBERNETES_VALIDATE_VERSION'; sys.version_info >= (3, 11) or __import__('tomli')" 2>/dev/null; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
  t0=$SECONDS
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml 'tomli; python_version < "3.11"'
  echo "installed kubernetes-validate in $((SECONDS - t0))s"
fi
PY=$VENV/bin/python
echo "kubernetes-validate: $("$PY" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)')"

crd_hash=$(cat scripts/crd-check/go.mod scripts/crd-check/go.sum scripts/crd-check/main.go | sha256sum | cut -c1-16)
CRD_CHECK=$CACHE/bin/crd-check-$crd_hash
if [ ! -x "$CRD_CHECK" ]; then
  echo "building scripts/crd-check"
  t0=$SECONDS
  mkdir -p "$CACHE/bin"
  (cd scripts/crd-check && go build -o "$CRD_CHECK" .)
  echo "built crd-check in $((SECONDS - t0))s"
fi

PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
  PROMTOOL=$CACHE/promtool/usr/bin/promtool
  if [ ! -x "$PROMTOOL" ] && command -v apt-get >/dev/null; then
    # Only the promtool binary, from Debian's prometheus package: no daemon installed.
    echo "extracting promtool from Debian's prometheus package"
    deb_dir=$(mktemp -d)
    if (cd "$deb_dir" && { apt-get download prometheus >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }); then
      mkdir -p "$CACHE/promtool" && dpkg-deb -x "$deb_dir"/prometheus_*.deb "$CACHE/promtool"
    fi
    rm -rf "$deb_dir"
  fi
  [ -x "$PROMTOOL" ] || PROMTOOL=
fi
echo "promtool: ${PROMTOOL:-not available (alert rules are then checked only by crd-check and the render)}"

if [ "${1:-}" = "--bless-readme" ]; then
  "$PY" scripts/helm_check.py readme --bless
  exit
fi

# ------------------------------------------------------------------ alerts
step "dashboards/ and the chart's copies"
scripts/sync-chart-files.sh --check || fail "the chart's copy of dashboards/ drifted"
ok "chart copies match dashboards/"
if [ -f dashboards/alerts.yaml ]; then
  if [ -n "$PROMTOOL" ]; then
    "$PROMTOOL" check rules dashboards/alerts.yaml
    if [ -f dashboards/alerts_test.yaml ]; then
      "$PROMTOOL" test rules dashboards/alerts_test.yaml
    fi
    ok "promtool check rules and test rules"
  fi
fi

# ------------------------------------------------------------------ render
# render NAME [helm args…]: lint and template at $KUBE_VERSION into $OUT/NAME.yaml.
render() {
  local name=$1
  shift
  "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$@" >"$OUT/$name.lint" 2>&1 ||
    { cat "$OUT/$name.lint"; fail "helm lint --strict $name"; }
  "$HELM" template bouncer "$@" --namespace mail --kube-version "$KUBE_VERSION" >"$OUT/$name.yaml" ||
    fail "helm template $name"
}

# check NAME VALUES…: schema validation and the agreement test of a rendered chart.
check() {
  local name=$1
  shift
  "$PY" scripts/helm_check.py validate -k "$KUBE_VERSION" "$OUT/$name.yaml" || fail "$name: schema validation"
  "$CRD_CHECK" "$OUT/$name.yaml" >/dev/null || fail "$name: ServiceMonitor/PrometheusRule validation"
  "$PY" scripts/helm_check.py agree --rendered "$OUT/$name.yaml" --values "$CHART/values.yaml" "$@" ||
    fail "$name: the pod and bouncer's configuration disagree"
}

step "default values and examples at Kubernetes $KUBE_VERSION"
render default "$CHART"
check default
ok "default values"
for example in "$CHART"/examples/*.yaml; do
  name=$(basename "$example" .yaml)
  render "$name" "$CHART" -f "$example"
  check "$name" "$example"
  ok "example $name"
done
grep -q '^kind: ServiceMonitor' "$OUT/monitoring.yaml" && grep -q '^kind: PrometheusRule' "$OUT/monitoring.yaml" ||
  fail "monitoring example renders no ServiceMonitor or PrometheusRule"
"$CRD_CHECK" "$OUT/monitoring.yaml"

step "Kubernetes 1.28: native sidecar refused, classic accepted"
if "$HELM" template bouncer "$CHART" --kube-version 1.28.0 >"$OUT/old.out" 2>&1; then
  fail "the native-sidecar default rendered for Kubernetes 1.28"
fi
grep -q 'needs Kubernetes 1.29 or later, and this cluster is v1.28.0.*sidecar.mode=classic' "$OUT/old.out" ||
  { cat "$OUT/old.out"; fail "the 1.28 refusal does not say why and what to do"; }
sed -n 's/^Error: //p' "$OUT/old.out"
ok "native default refused at 1.28"
"$HELM" template bouncer "$CHART" -f "$CHART/examples/classic-sidecar.yaml" --kube-version 1.28.0 >"$OUT/classic-128.yaml"
"$PY" scripts/helm_check.py validate -k 1.28.0 "$OUT/classic-128.yaml"
ok "classic example renders and validates at 1.28"

step "render-time refusals"
# refuse MESSAGE-REGEX helm-args…: the render must fail and say MESSAGE.
refuse() {
  local want=$1
  shift
  if "$HELM" template bouncer "$CHART" --kube-version "$KUBE_VERSION" "$@" >"$OUT/refuse.out" 2>&1; then
    fail "rendered although it should refuse: $*"
  fi
  grep -qE "$want" "$OUT/refuse.out" || { cat "$OUT/refuse.out"; fail "refusal without the expected message: $*"; }
  ok "refused: $*"
}
refuse 'terminationGracePeriodSeconds \(50\) must exceed' --set workload.terminationGracePeriodSeconds=50
refuse 'needs a transactional.id that survives restarts' --set config.guarantee=exactly-once
refuse "invalid propertyName 'acks'" --set config.kafka.producer.acks=1
refuse 'rules.gitSync.repo' --set rules.source=gitSync
refuse 'which is bouncer.s http.port' --set 'sender.ports[0].containerPort=9464'
refuse 'which the chart manages' --set 'extraEnv[0].name=BOUNCER_RULES_DIR' --set 'extraEnv[0].value=/x'
refuse "value must be true" --set securityContext.readOnlyRootFilesystem=false

step "the agreement test catches a broken pod"
# mutate NAME SED-EXPR WANT: the mutated rendering must fail the check, naming WANT.
mutate() {
  local name=$1 expr=$2 want=$3
  sed -E "$expr" "$OUT/$name.yaml" >"$OUT/mutant.yaml"
  cmp -s "$OUT/$name.yaml" "$OUT/mutant.yaml" && fail "mutation changed nothing: $expr"
  if "$PY" scripts/helm_check.py agree --rendered "$OUT/mutant.yaml" --values "$CHART/values.yaml" \
      "$CHART/examples/$name.yaml" >"$OUT/mutant.out" 2>&1; then
    fail "the agreement test missed: $expr"
  fi
  grep -q "$want" "$OUT/mutant.out" || { cat "$OUT/mutant.out"; fail "wrong complaint for: $expr"; }
  ok "caught: $want"
}
mutate git-sync 's#rules_dir = "/rules/repo/rules"#rules_dir = "/rules/rules"#' 'not the path git-sync writes'
mutate git-sync 's#--link=repo#--link=current#' 'not the path git-sync writes'
mutate git-sync '/- --one-time/d' 'one ordinary init container with --one-time'
mutate classic-sidecar 's#http_listen = "0.0.0.0:9477"#http_listen = "0.0.0.0:9478"#' 'is not 9478'
mutate native-sidecar '0,/path: \/readyz/s##path: /healthz#' 'startupProbe asks /healthz'
mutate native-sidecar 's#terminationGracePeriodSeconds: 75#terminationGracePeriodSeconds: 60#' 'does not exceed sender drain'
mutate native-sidecar 's#shutdown_timeout = "20s"#shutdown_timeout = "1m"#' 'does not exceed sender drain'
mutate native-sidecar 's#^    group = "bouncer"#    group = "bouncer"\n    max_inflight = 5#' "no setting of bouncer"
mutate existing-configmap 's#mountPath: /etc/bouncer/rules#mountPath: /etc/bouncer/rules2#' 'not the mount of a ConfigMap'
mutate monitoring 's#- port: http#- port: metrics#' 'no port of the selected Service'
mutate statefulset 's#\$\(POD_NAMESPACE\)\.\$\(POD_NAME\)#bouncer#' 'derived from the pod name'
sed -E 's#^(  *)allowPrivilegeEscalation: false#\1allowPrivilegeEscalation: false\n\1privilegd: true#' \
  "$OUT/default.yaml" >"$OUT/mutant.yaml"
"$PY" scripts/helm_check.py validate -k "$KUBE_VERSION" "$OUT/mutant.yaml" >/dev/null 2>&1 &&
  fail "strict schema validation accepted an unknown field"
ok "caught: unknown field in a container's securityContext"

step "injection into a team's own chart (helm/examples/mta-with-bouncer)"
cp -r helm "$OUT/helm"
"$HELM" dependency build "$OUT/helm/examples/mta-with-bouncer" >/dev/null
render inject "$OUT/helm/examples/mta-with-bouncer"
"$PY" scripts/helm_check.py validate -k "$KUBE_VERSION" "$OUT/inject.yaml"
"$PY" scripts/helm_check.py agree --rendered "$OUT/inject.yaml" --values "$CHART/values.yaml" \
  helm/examples/mta-with-bouncer/values.yaml --values-key bouncer
ok "parent chart with the injected sidecar"

step "Grafana dashboards: whatever JSON the chart carries"
if grep -q 'name: bouncer-dashboards' "$OUT/monitoring.yaml"; then
  ls "$CHART"/files/dashboards/*.json >/dev/null 2>&1 || fail "a dashboard ConfigMap rendered without dashboards"
else
  ls "$CHART"/files/dashboards/*.json >/dev/null 2>&1 && fail "the chart carries dashboards but rendered none"
  ok "no dashboard in the chart: no ConfigMap"
fi
mkdir -p "$OUT/helm/bouncer/files/dashboards"
echo '{"title": "check", "panels": []}' >"$OUT/helm/bouncer/files/dashboards/zz-check.json"
"$HELM" template bouncer "$OUT/helm/bouncer" -f "$CHART/examples/monitoring.yaml" --kube-version "$KUBE_VERSION" \
  --show-only templates/dashboards.yaml >"$OUT/dash.yaml"
"$PY" - "$OUT/dash.yaml" <<'EOF'
import json, sys, yaml
cm = yaml.safe_load(open(sys.argv[1]))
assert cm["kind"] == "ConfigMap", cm
assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", cm["metadata"]["labels"]
assert json.loads(cm["data"]["zz-check.json"])["title"] == "check", cm["data"]
EOF
"$PY" scripts/helm_check.py validate -k "$KUBE_VERSION" "$OUT/dash.yaml"
ok "a carried dashboard renders as a sidecar-discoverable ConfigMap"

step "chart README"
"$PY" scripts/helm_check.py readme
ok "values table"

step "done"
echo "$passed passed, 0 failed"
