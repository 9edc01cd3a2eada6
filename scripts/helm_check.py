#!/usr/bin/env python3
"""Offline checks of the bouncer Helm chart's rendered manifests.

Run by scripts/helm-check.sh (which installs helm and this script's
dependencies); not meant to be called by hand except to bless the README:

  validate  FILE... -k V    every manifest against the Kubernetes V schemas
                            (kubernetes-validate, strict: unknown fields are
                            errors); ServiceMonitor and PrometheusRule are left
                            to scripts/crd-check
  agree     --rendered F --values V...
                            the pod runs bouncer with a configuration that
                            agrees with the pod spec: rules_dir is where
                            git-sync (or the ConfigMap) puts the rules; ports,
                            probes, Service and ServiceMonitor use http_listen's
                            port; the grace period covers sender drain plus
                            shutdown_timeout; settings exist in bouncer
  readme    [--bless]       README.md's values table matches values.yaml
"""

import argparse
import copy
import json
import posixpath
import re
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "bouncer"
OPERATIONS = ROOT / "docs" / "operations.md"
ALERTS = ROOT / "dashboards" / "alerts.yaml"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
BOUNCER_PORT_NAME = "bouncer-http"


class Failure(Exception):
    pass


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------- validate


def cmd_validate(args):
    import kubernetes_validate

    errors = 0
    counts = {}
    for path in args.files:
        for doc in load_all(path):
            kind = doc.get("kind", "?")
            name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
            if kind in CRD_KINDS:
                counts["crd (left to crd-check)"] = counts.get("crd (left to crd-check)", 0) + 1
                continue
            try:
                kubernetes_validate.validate(doc, args.kube_version, strict=True)
                counts[kind] = counts.get(kind, 0) + 1
            except kubernetes_validate.ValidationError as e:
                errors += 1
                where = "/".join(str(p) for p in e.path)
                print(f"{path}: {name}: {where}: {e.message}", file=sys.stderr)
            except kubernetes_validate.SchemaNotFoundError as e:
                errors += 1
                print(f"{path}: {name}: no schema in Kubernetes {args.kube_version}: {e}", file=sys.stderr)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if errors:
        print(f"validate: {errors} invalid manifest(s)", file=sys.stderr)
        return 1
    print(f"validate: Kubernetes {args.kube_version} schemas, strict: {summary}")
    return 0


# ---------------------------------------------------------------- agree


def merge(base, over):
    """Helm's values merge: maps merge, anything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def reference():
    """Settings and owned properties from the generated block of docs/operations.md."""
    text = OPERATIONS.read_text()
    block = text.split("<!-- BEGIN GENERATED CONFIG REFERENCE", 1)[1].split(
        "<!-- END GENERATED CONFIG REFERENCE", 1
    )[0]
    toml_text = block.split("```toml\n", 1)[1].split("```", 1)[0]
    defaults = tomllib.loads(toml_text)
    owned_line = block.split("configuration error naming it:\n", 1)[1].split("\n", 1)[0]
    owned = re.findall(r"`([^`]+)`", owned_line)
    if not owned:
        raise Failure("docs/operations.md: no owned properties found in the generated reference")
    return defaults, owned


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60,
             "h": 3600, "hr": 3600, "hrs": 3600, "d": 86400, "day": 86400, "days": 86400}
    total = 0.0
    pos = 0
    for m in re.finditer(r"\s*(\d+)\s*([a-z]+)", text):
        if m.start() != pos or m.group(2) not in units:
            raise Failure(f"cannot read the duration {text!r}")
        total += int(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise Failure(f"cannot read the duration {text!r}")
    return total


def apply_env(config, name, value):
    """bouncer's BOUNCER_A__B=value rule (src/config.rs apply_env)."""
    keys = [p.lower() for p in name[len("BOUNCER_"):].split("__")]
    is_kafka = keys[0] == "kafka"
    if is_kafka:
        keys[-1] = keys[-1].replace("_", ".")
        parsed = value
    else:
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
            if isinstance(parsed, dict):
                parsed = value
        except tomllib.TOMLDecodeError:
            parsed = value
    node = config
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = parsed


def under(path, mount):
    """The part of `path` below `mount`, or None."""
    path, mount = posixpath.normpath(path), posixpath.normpath(mount)
    if path == mount:
        return ""
    if path.startswith(mount.rstrip("/") + "/"):
        return path[len(mount.rstrip("/")) + 1:]
    return None


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise Failure(f"container {container['name']} has no port named {port!r}")


def flag(args, name):
    for a in args:
        if a == f"--{name}":
            return True
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def cmd_agree(args):
    values = {}
    for v in args.values:
        with open(v) as f:
            loaded = yaml.safe_load(f) or {}
        if args.values_key and v != args.values[0]:
            loaded = loaded.get(args.values_key, {})
        values = merge(values, loaded)
    docs = load_all(args.rendered)
    problems = []
    check = problems.append
    try:
        facts = agree(docs, values, check)
    except Failure as e:
        check(str(e))
        facts = {}
    if problems:
        for p in problems:
            print(f"{args.rendered}: {p}", file=sys.stderr)
        return 1
    print("agree: " + "; ".join(f"{k} {v}" for k, v in facts.items()))
    return 0


def agree(docs, values, check):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    defaults, owned = reference()

    workloads = [d for d in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])]
    pods = []
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        all_containers = spec.get("initContainers", []) + spec.get("containers", [])
        if any(c["name"] == "bouncer" for c in all_containers):
            pods.append((w, spec))
    if len(pods) != 1:
        raise Failure(f"expected one workload running bouncer, found {len(pods)}")
    workload, pod = pods[0]
    init = pod.get("initContainers", [])
    main = pod.get("containers", [])
    names = [c["name"] for c in init + main]
    if len(names) != len(set(names)):
        check(f"duplicate container names: {names}")

    # Where bouncer runs: a native sidecar, or a second container.
    mode = values["sidecar"]["mode"]
    bouncer_index = next((i for i, c in enumerate(init) if c["name"] == "bouncer"), None)
    if mode == "native":
        if bouncer_index is None or init[bouncer_index].get("restartPolicy") != "Always":
            raise Failure("native mode: bouncer must be an init container with restartPolicy: Always")
        bouncer = init[bouncer_index]
    else:
        if bouncer_index is not None:
            check("classic mode: bouncer must not be an init container")
        bouncer = next(c for c in main if c["name"] == "bouncer")
        if "restartPolicy" in bouncer:
            check("classic mode: an ordinary container takes no restartPolicy")
    if not main or all(c["name"] in ("bouncer", "git-sync") for c in main):
        check("the pod has no sender container")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = bouncer.get("volumeMounts", [])

    # The configuration file bouncer is started with, and its ConfigMap.
    cargs = bouncer.get("args", [])
    if cargs[:1] != ["run"] or "--config" not in cargs:
        raise Failure(f"bouncer's args {cargs} do not run it with --config")
    config_path = cargs[cargs.index("--config") + 1]
    cm_name = key = None
    for m in mounts:
        rest = under(config_path, m["mountPath"])
        if rest is not None and "configMap" in volumes.get(m["name"], {}):
            cm_name = volumes[m["name"]]["configMap"]["name"]
            key = m.get("subPath") or rest
    if not cm_name:
        raise Failure(f"--config {config_path} is on no ConfigMap volume of the bouncer container")
    cm = next((d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == cm_name), None)
    if cm is None or key not in cm.get("data", {}):
        raise Failure(f"ConfigMap {cm_name} with key {key} (bouncer's --config) is not rendered")
    config = tomllib.loads(cm["data"][key])

    # Environment overrides, as bouncer applies them.
    env = bouncer.get("env", [])
    for e in env:
        if not e["name"].startswith("BOUNCER_"):
            continue
        if "value" in e:
            apply_env(config, e["name"], e["value"])
        elif e["name"] in ("BOUNCER_RULES_DIR", "BOUNCER_HTTP_LISTEN", "BOUNCER_SHUTDOWN_TIMEOUT",
                           "BOUNCER_API_TOKENS_FILE"):
            check(f"{e['name']} comes from valueFrom, so its agreement with the pod cannot be checked")

    # Every setting is one bouncer has; no owned Kafka property.
    for k, v in config.items():
        if k == "kafka":
            continue
        if k not in defaults:
            check(f"bouncer.toml sets {k!r}, which is no setting of bouncer (docs/operations.md)")
        elif isinstance(v, dict):
            for sub in v:
                if sub not in defaults[k]:
                    check(f"bouncer.toml sets {k}.{sub!r}, which is no setting of bouncer")
        elif type(v) is not type(defaults[k]):
            check(f"bouncer.toml: {k} = {v!r} has another type than its default {defaults[k]!r}")
    kafka = config.get("kafka", {})
    for section, props in [("kafka", kafka), ("kafka.consumer", kafka.get("consumer", {})),
                           ("kafka.producer", kafka.get("producer", {}))]:
        for p in props:
            if p in owned:
                check(f"{section}.{p!r} is owned by bouncer; it refuses to start with it")
    if not str(kafka.get("bootstrap.servers", "")).strip():
        check("kafka.bootstrap.servers is empty; bouncer refuses to start")

    # Ports and probes against http_listen.
    listen = config.get("http_listen", defaults["http_listen"])
    port = int(listen.rsplit(":", 1)[1])
    named = [p for p in bouncer.get("ports", []) if p.get("name") == BOUNCER_PORT_NAME]
    if len(named) != 1 or named[0]["containerPort"] != port:
        check(f"the bouncer container's port {BOUNCER_PORT_NAME} is not {port} (http_listen {listen})")
    for probe, path in [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        p = bouncer.get(probe)
        if not p or "httpGet" not in p:
            check(f"bouncer has no HTTP {probe}")
            continue
        if p["httpGet"].get("path") != path:
            check(f"bouncer's {probe} asks {p['httpGet'].get('path')}, not {path}")
        if port_number(bouncer, p["httpGet"]["port"]) != port:
            check(f"bouncer's {probe} probes port {p['httpGet']['port']}, not http_listen's {port}")
    for c in init + main:
        if c is bouncer:
            continue
        for p in c.get("ports", []):
            if p.get("containerPort") == port:
                check(f"container {c['name']} also uses port {port}; the pod shares one network")

    # Services select the pod and reach that port; the ServiceMonitor scrapes a Service port.
    pod_labels = workload["spec"]["template"]["metadata"].get("labels", {})
    services = []
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            check(f"Service {svc['metadata']['name']} does not select the bouncer pods")
            continue
        services.append(svc)
        for sp in svc["spec"]["ports"]:
            if port_number(bouncer, sp.get("targetPort", sp["port"])) != port:
                check(f"Service {svc['metadata']['name']} port {sp['name']} reaches {sp.get('targetPort')}, not {port}")
    for sm in by_kind.get("ServiceMonitor", []):
        want = sm["spec"]["selector"].get("matchLabels", {})
        targets = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
        if not targets:
            check(f"ServiceMonitor {sm['metadata']['name']} selects no Service of the bouncer pods")
        for ep in sm["spec"]["endpoints"]:
            if not any(ep.get("port") == sp.get("name") for s in targets for sp in s["spec"]["ports"]):
                check(f"ServiceMonitor endpoint port {ep.get('port')!r} is no port of the selected Service")
            if ep.get("path", "/metrics") != "/metrics":
                check(f"ServiceMonitor scrapes {ep.get('path')}, not /metrics")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        want = pdb["spec"]["selector"].get("matchLabels", {})
        if any(pod_labels.get(k) != v for k, v in want.items()):
            check(f"PodDisruptionBudget {pdb['metadata']['name']} does not select the bouncer pods")

    # The alerts rendered are the alerts of dashboards/alerts.yaml.
    for rule in by_kind.get("PrometheusRule", []):
        if ALERTS.exists():
            source = yaml.safe_load(ALERTS.read_text())["groups"]
            if rule["spec"]["groups"] != source:
                check(f"PrometheusRule {rule['metadata']['name']} differs from dashboards/alerts.yaml")

    # Termination: the sender drains, then bouncer gets shutdown_timeout.
    shutdown = duration_seconds(config.get("shutdown_timeout", defaults["shutdown_timeout"]))
    drain = values["sender"]["drainSeconds"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not grace > drain + shutdown:
        check(f"terminationGracePeriodSeconds {grace} does not exceed sender drain {drain}s + shutdown_timeout {shutdown:g}s")

    # rules_dir is where the rules are written.
    rules_dir = config.get("rules_dir", defaults["rules_dir"])
    source = values["rules"]["source"]
    if source == "gitSync":
        syncs = [(i, c) for i, c in enumerate(init) if "git-sync" in c["image"]] + \
                [(len(init) + i, c) for i, c in enumerate(main) if "git-sync" in c["image"]]
        one_time = [(i, c) for i, c in syncs if flag(c.get("args", []), "one-time")]
        steady = [(i, c) for i, c in syncs if not flag(c.get("args", []), "one-time")]
        if len(one_time) != 1 or one_time[0][0] >= len(init) or one_time[0][1].get("restartPolicy"):
            raise Failure("git-sync: expected one ordinary init container with --one-time (the first clone)")
        if len(steady) != 1:
            raise Failure("git-sync: expected one long-running git-sync container")
        if mode == "native":
            if steady[0][0] >= len(init) or steady[0][1].get("restartPolicy") != "Always":
                check("native mode: git-sync should be a native sidecar too")
            if not one_time[0][0] < bouncer_index:
                check("the first clone must come before bouncer among the init containers")
        expected = None
        for _, c in one_time + steady:
            a = c.get("args", [])
            root, link = flag(a, "root"), flag(a, "link")
            if not root or not link:
                raise Failure(f"{c['name']} lacks --root or --link")
            link_path = posixpath.join(root, link)
            hit = None
            for m in c.get("volumeMounts", []):
                rest = under(link_path, m["mountPath"])
                if rest is not None and "emptyDir" in volumes.get(m["name"], {}):
                    hit = (m["name"], rest)
            if not hit:
                raise Failure(f"{c['name']} writes {link_path}, which is on no shared emptyDir")
            bm = [m for m in mounts if m["name"] == hit[0]]
            if len(bm) != 1 or bm[0].get("subPath"):
                raise Failure(f"bouncer does not mount git-sync's volume {hit[0]} whole")
            if not bm[0].get("readOnly"):
                check("bouncer should mount the git volume read-only")
            sub = values["rules"]["gitSync"].get("subPath", "").strip("/")
            path = posixpath.normpath(posixpath.join(bm[0]["mountPath"], hit[1], sub))
            if expected and path != expected:
                check(f"{c['name']} writes elsewhere ({path}) than the other git-sync ({expected})")
            expected = path
            if flag(a, "repo") != values["rules"]["gitSync"]["repo"]:
                check(f"{c['name']} syncs {flag(a, 'repo')}, not rules.gitSync.repo")
        if rules_dir != expected:
            check(f"rules_dir {rules_dir} is not the path git-sync writes ({expected})")
        where = f"git-sync link ({expected})"
    else:
        want_cm = values["rules"]["existingConfigMap"]["name"] if source == "existingConfigMap" else None
        hits = [m for m in mounts if m["mountPath"] == rules_dir and "configMap" in volumes.get(m["name"], {})]
        if len(hits) != 1:
            raise Failure(f"rules_dir {rules_dir} is not the mount of a ConfigMap volume")
        if hits[0].get("subPath"):
            check("a subPath mount never sees ConfigMap updates; mount the rules ConfigMap whole")
        name = volumes[hits[0]["name"]]["configMap"]["name"]
        if want_cm and name != want_cm:
            check(f"rules ConfigMap is {name}, not rules.existingConfigMap.name {want_cm}")
        if source == "configMap":
            cms = [d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == name]
            if not cms:
                check(f"rules ConfigMap {name} is not rendered")
            else:
                data = cms[0].get("data") or {}
                if set(data) != set(values["rules"].get("files") or {}):
                    check(f"rules ConfigMap {name} holds {sorted(data)}, not rules.files")
        where = f"ConfigMap {name}"

    # API tokens: a file on a Secret volume.
    tokens = config.get("api_tokens_file", "")
    if values["apiTokens"].get("existingSecret"):
        found = False
        for m in mounts:
            rest = under(tokens, m["mountPath"]) if tokens else None
            vol = volumes.get(m["name"], {})
            if rest and "secret" in vol and vol["secret"]["secretName"] == values["apiTokens"]["existingSecret"]:
                items = vol["secret"].get("items")
                found = items is None or any(i["path"] == rest for i in items)
        if not found:
            check(f"api_tokens_file {tokens!r} is not a file of Secret {values['apiTokens']['existingSecret']}")
    elif tokens:
        check(f"api_tokens_file {tokens!r} is set but apiTokens.existingSecret is not")

    # Restricted security context.
    sc = bouncer.get("securityContext", {})
    for k, v in [("runAsNonRoot", True), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)]:
        if sc.get(k) is not v:
            check(f"bouncer's securityContext.{k} is not {v}")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        check("bouncer does not drop all capabilities")
    if (sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        check("bouncer runs without the RuntimeDefault seccomp profile")

    # Exactly-once: a stable, per-pod transactional id.
    if config.get("guarantee") == "exactly-once":
        if workload["kind"] != "StatefulSet":
            check("exactly-once without a StatefulSet: transactional ids would change on restart")
        names_env = [e["name"] for e in env]
        tid = next((e for e in env if e["name"] == "BOUNCER_TRANSACTIONAL_ID"), None)
        pod_name = next((e for e in env if e["name"] == "POD_NAME"), None)
        if not tid or "$(POD_NAME)" not in tid.get("value", "") or not pod_name \
                or pod_name["valueFrom"]["fieldRef"]["fieldPath"] != "metadata.name" \
                or names_env.index("POD_NAME") > names_env.index("BOUNCER_TRANSACTIONAL_ID"):
            check("exactly-once: BOUNCER_TRANSACTIONAL_ID must be derived from the pod name")

    return {
        "mode": mode,
        "workload": workload["kind"],
        "rules_dir": f"{rules_dir} = {where}",
        "port": port,
        "grace": f"{grace}s > {drain}s + {shutdown:g}s",
    }


# ---------------------------------------------------------------- readme

README_BEGIN = "<!-- BEGIN VALUES TABLE (scripts/helm-check.sh --bless-readme) -->"
README_END = "<!-- END VALUES TABLE -->"


def values_table():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = []
    stack = []
    desc = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            desc = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and desc:
            desc.append(stripped[1:].strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):(.*)$", line)
        if not m:
            desc = []
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        if desc:
            path = [k for _, k in stack]
            value = values
            for k in path:
                value = value[k]
            default = json.dumps(value, ensure_ascii=False)
            rows.append(f"| `{'.'.join(path)}` | `{default}` | {' '.join(desc)} |")
        desc = []
    return "\n".join([README_BEGIN, "", "| key | default | description |", "|---|---|---|", *rows, "", README_END])


def cmd_readme(args):
    path = CHART / "README.md"
    text = path.read_text()
    try:
        before, rest = text.split(README_BEGIN, 1)
        _, after = rest.split(README_END, 1)
    except ValueError:
        print(f"{path}: lacks the markers {README_BEGIN} … {README_END}", file=sys.stderr)
        return 1
    fresh = values_table()
    current = README_BEGIN + rest.split(README_END, 1)[0] + README_END
    if current == fresh:
        print("readme: the values table matches values.yaml")
        return 0
    if args.bless:
        path.write_text(before + fresh + after)
        print(f"readme: rewrote the values table in {path}")
        return 0
    print(f"{path}: the values table differs from values.yaml; run scripts/helm-check.sh --bless-readme",
          file=sys.stderr)
    return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate")
    v.add_argument("-k", "--kube-version", required=True)
    v.add_argument("files", nargs="+")
    a = sub.add_parser("agree")
    a.add_argument("--rendered", required=True)
    a.add_argument("--values", nargs="+", required=True, help="chart values.yaml first, then overrides")
    a.add_argument("--values-key", help="in the overrides, the bouncer values are under this key (parent chart)")
    r = sub.add_parser("readme")
    r.add_argument("--bless", action="store_true")
    args = parser.parse_args()
    return {"validate": cmd_validate, "agree": cmd_agree, "readme": cmd_readme}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
