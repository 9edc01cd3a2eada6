#!/usr/bin/env python3
"""The Grafana dashboard and the alert rules against a real Prometheus
scraping a real bouncer on the real broker (issue 5). Run by
scripts/prometheus-check.sh, which provides Prometheus, promtool, PyYAML, a
built bouncer and a broker; all traffic stays on 127.0.0.1.

1. Static: dashboards/bouncer.json is a Grafana dashboard (schemaVersion,
   the datasource, instance and rule variables, every panel on
   ${datasource}, rates over $__rate_interval, template variables only in
   regex matchers) and every metric its queries and the alert rules name is
   one bouncer exports (src/metrics.rs) or `up`; promtool check rules and
   test rules.
2. Scenario: Prometheus (scrape every 1 s, dashboards/alerts.yaml loaded)
   scrapes `bouncer run` on fresh topics (2 input partitions) while events
   flow; one scripted trigger per rare condition: a REST API change, an
   invalid control record, a broken rule file (bouncer_rules_last_reload_
   successful goes 0, the reload alert goes pending, then the file is
   fixed), a record the forward topic refuses (a produce error), invalid
   events, and a rebalance (a second instance joins the group, the revoked
   partition's lag series disappears from the first, then it leaves on
   SIGTERM and the partition comes back).
3. Evaluation, events still flowing: the template variables' label_values()
   through the label API; every target of every panel with the variables
   substituted ($__rate_interval -> 30s, $__interval -> 15s, $__range -> 5m,
   template variables -> .*) as an instant query that must parse and return
   data, plus a range query over the run for the report; every alert rule's
   expression must parse; every rule group healthy; the alerts that the
   scenario should make pending are.

Prints one line per check and `N passed, M failed`; exit 1 on any failure.
"""

import argparse
import base64
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Grafana's built-in variables, as the issue fixes them for the check.
BUILTINS = {
    "__rate_interval": "30s",
    "__interval_ms": "15000",
    "__interval": "15s",
    "__range_s": "300",
    "__range_ms": "300000",
    "__range": "5m",
}
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan", "atan2", "start", "end"}

RULES = """\
[[rule]]
id = "cancel-campaign-x"
code = 550
status = "5.7.1"
description = "Campaign X cancelled by the customer"
tags = ["campaign_X"]

[[rule]]
id = "defer-throttling-isp"
code = 451
status = "4.7.0"
description = "Deferred: throttling.example rate limits us"
domain = "throttling.example"

[[rule]]
id = "shadow-disposable"
code = 550
description = "Disposable mailbox provider, watched before enforcing"
domain = "disposable.example"
mode = "shadow"
"""
BROKEN_RULE = """\
[[rule]]
id = "half-written"
code = 550
domain = [
"""
FIXED_RULE = """\
[[rule]]
id = "late-fix"
code = 550
description = "The fixed file"
domain = "never-sent.example"
"""


# --------------------------------------------------------------------- report


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.started = time.monotonic()

    def ok(self, what):
        self.passed += 1
        print(f"ok: {what}", flush=True)

    def fail(self, what):
        self.failed += 1
        self.failures.append(what)
        print(f"FAIL: {what}", flush=True)

    def check(self, cond, what, why=""):
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + why if why else ''}")
        return cond

    def info(self, what):
        print(f"     {what}", flush=True)

    def step(self, what):
        print(f"\n--- {what} ({time.monotonic() - self.started:.1f}s)", flush=True)


class Abort(Exception):
    """A scenario step that later steps depend on failed."""


# --------------------------------------------------------------------- helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=10):
    """(status, text), or (None, error) when nothing answers."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


def wait_for(what, cond, timeout, interval=0.1):
    """Polls cond() until it returns something truthy; returns it, or raises Abort."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise Abort(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def parse_exposition(text):
    """[(name, {labels}, value)] of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        samples.append((m.group(1), labels, value))
    return samples


def sample(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None if none."""
    values = [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
    return sum(values) if values else None


def metric_names(expr):
    """The metric names a PromQL expression selects (a lexical approximation:
    identifiers that are not functions, keywords, label lists or numbers)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]", " 1s ", e)  # Grafana variables
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # 1e3, durations
        if e[m.end():].lstrip().startswith("("):
            continue  # a function
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exported_metrics(metrics_rs):
    """Metric names src/metrics.rs defines, as Prometheus sees them."""
    text = metrics_rs.read_text()
    names = set(re.findall(r'"(bouncer_[a-z0-9_]+)"', text))
    for hist in re.findall(r'HistogramOpts::new\(\s*"([a-z0-9_]+)"', text):
        names.discard(hist)
        names |= {f"{hist}_bucket", f"{hist}_sum", f"{hist}_count"}
    if "ProcessCollector" in text:
        names |= PROCESS_METRICS
    return names


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def substitute(expr, variables):
    """Grafana's interpolation as the check fixes it; returns (expr, problems)."""
    problems = []
    matcher_spans = [m.span(3) for m in re.finditer(r'([a-zA-Z_]\w*)\s*(=~|!~)\s*"((?:[^"\\]|\\.)*)"', expr)]
    for m in re.finditer(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", expr):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in variables and not any(a <= m.start() and m.end() <= b for a, b in matcher_spans):
            problems.append(f"template variable ${name} outside a =~ matcher")
    out = expr
    for name in sorted(BUILTINS, key=len, reverse=True):
        out = out.replace("${%s}" % name, BUILTINS[name])
        out = re.sub(r"\$%s(?!\w)" % re.escape(name), BUILTINS[name], out)
    for name in variables:
        out = re.sub(r"\$\{%s(?::\w+)?\}|\$%s(?!\w)|\[\[%s\]\]" % (name, name, name), ".*", out)
    left = re.findall(r"\$\{?\w+\}?|\[\[\w+\]\]", out)
    if left:
        problems.append(f"unknown variables {left}")
    return out, problems


# --------------------------------------------------------------------- processes


class Processes:
    """Every child this check starts, stopped (by pid) on the way out."""

    def __init__(self):
        self.children = []

    def spawn(self, name, cmd, log, **kw):
        f = open(log, "ab")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
        f.close()
        self.children.append((name, p))
        return p

    def stop_all(self):
        for name, p in reversed(self.children):
            if p.poll() is None:
                p.terminate()
        for name, p in reversed(self.children):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Bouncer:
    def __init__(self, procs, binary, config, port, log, instance):
        self.port = port
        self.log = log
        self.instance = instance
        self.target = f"127.0.0.1:{port}"
        env = dict(os.environ, HOSTNAME=instance, RUST_LOG="info,rdkafka=warn")
        env.pop("BOUNCER_GROUP", None)
        self.proc = procs.spawn(instance, [binary, "run", "--config", str(config)], log,
                                env=env, stdin=subprocess.DEVNULL)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def alive(self):
        return self.proc.poll() is None

    def get(self, path):
        return http("GET", self.url(path))

    def metrics(self):
        code, text = self.get("/metrics")
        if code != 200:
            raise Abort(f"{self.instance} /metrics answered {code}: {text[:200]}")
        return parse_exposition(text)

    def metrics_text(self):
        return self.get("/metrics")[1]

    def status(self):
        code, text = self.get("/status")
        return json.loads(text) if code == 200 else None

    def assigned(self):
        s = self.status()
        return sorted(s["kafka"]["assigned_partitions"]) if s else []

    def wait_ready(self, timeout=60):
        def ready():
            if not self.alive():
                raise Abort(f"{self.instance} exited ({self.proc.returncode}) before it was ready")
            return self.get("/readyz")[0] == 200
        wait_for(f"{self.instance} /readyz", ready, timeout)

    def processed(self):
        s = self.metrics()
        return sum(sample(s, "bouncer_events_total", outcome=o) or 0
                   for o in ("forwarded", "failed", "deferred", "invalid"))

    def tail(self, n=40):
        try:
            lines = Path(self.log).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Prometheus:
    def __init__(self, url):
        self.url = url

    def api(self, path, params):
        code, text = http("POST", f"{self.url}{path}",
                          body=urllib.parse.urlencode(params, doseq=True).encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            answer = json.loads(text)
        except (TypeError, ValueError):
            return {"status": "error", "error": f"HTTP {code}: {text[:200]}"}
        return answer

    def query(self, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("/api/v1/query", params)

    def query_range(self, expr, start, end, step):
        return self.api("/api/v1/query_range",
                        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step})

    def vector(self, expr):
        answer = self.query(expr)
        if answer.get("status") != "success":
            raise Abort(f"query {expr!r} failed: {answer.get('error')}")
        return answer["data"]["result"]

    def label_values(self, label, match, start, end):
        params = {"start": f"{start:.3f}", "end": f"{end:.3f}"}
        if match:
            params["match[]"] = match
        q = urllib.parse.urlencode(params)
        code, text = http("GET", f"{self.url}/api/v1/label/{urllib.parse.quote(label)}/values?{q}")
        answer = json.loads(text) if code == 200 else {"status": "error", "error": f"HTTP {code}: {text[:200]}"}
        return answer


def result_size(answer):
    data = answer.get("data", {})
    if data.get("resultType") == "scalar" or data.get("resultType") == "string":
        return 1
    return len(data.get("result", []))


def range_summary(answer):
    """(text, values) of a range query's answer."""
    if answer.get("status") != "success":
        return f"range query failed: {answer.get('error')}", []
    result = answer["data"]["result"]
    values = [float(v) for series in result for _, v in series.get("values", [])
              if v not in ("NaN", "+Inf", "-Inf")]
    peak = f", max {max(values):.4g}" if values else ""
    return f"range: {len(result)} series{peak}", values


# Metrics the scenario's triggers move: a panel built on one must show it
# (a non-zero value during the run), not just exist.
TRIGGERED = {
    "bouncer_api_requests_total": "the API change",
    "bouncer_produce_errors_total": "the produce error",
    "bouncer_control_records_rejected_total": "the invalid control record",
    "bouncer_rebalances_total": "the rebalance",
    "bouncer_rules_reload_total": "the reloads",
    "bouncer_forced_total": "the enforce rules",
    "bouncer_rule_matches_total": "the shadow rule",
}


# --------------------------------------------------------------------- static checks


def check_dashboard_static(rep, dashboard, exported):
    rep.check(dashboard.get("schemaVersion", 0) >= 39, "dashboard schemaVersion >= 39",
              f"schemaVersion {dashboard.get('schemaVersion')}")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    rep.check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
              "datasource is a template variable of type prometheus", json.dumps(ds)[:200])
    for name, metric in (("instance", "bouncer_events_total"), ("rule", "bouncer_forced_total")):
        v = variables.get(name, {})
        query = v.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        rep.check(v.get("type") == "query" and query == f"label_values({metric}, {name})"
                  and v.get("multi") is True and v.get("includeAll") is True
                  and v.get("datasource", {}).get("uid") in ("${datasource}", "$datasource"),
                  f"variable {name}: label_values({metric}, {name}), multi, includeAll, on ${{datasource}}",
                  json.dumps(v)[:300])
    panels = list(all_panels(dashboard.get("panels", [])))
    ids = [p.get("id") for p in panels]
    rep.check(len(ids) == len(set(ids)), "panel ids are unique")
    boxes = [(p.get("title"), p.get("gridPos", {})) for p in panels]
    overlaps = [f"{a} / {b}" for i, (a, g) in enumerate(boxes) for b, h in boxes[i + 1:]
                if g and h and g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"]
                and g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]]
    rep.check(all(g and g["x"] + g["w"] <= 24 for _, g in boxes) and not overlaps,
              "every panel has a gridPos within 24 columns, none overlapping", f"{overlaps[:5]}")
    queried = [p for p in panels if p.get("type") != "row"]
    bad_ds, literal_ranges, unknown, no_targets = [], [], {}, []
    used = set()
    for p in queried:
        if p.get("datasource", {}).get("uid") not in ("${datasource}", "$datasource"):
            bad_ds.append(p.get("title"))
        targets = [t for t in p.get("targets", []) if t.get("expr")]
        if not targets:
            no_targets.append(p.get("title"))
        for t in targets:
            if t.get("datasource", {}).get("uid", "${datasource}") not in ("${datasource}", "$datasource"):
                bad_ds.append(f"{p.get('title')} [{t.get('refId')}]")
            for r in re.findall(r"\[([^\]]*)\]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', t["expr"])):
                if not r.startswith("$"):
                    literal_ranges.append(f"{p.get('title')}: [{r}]")
            for name in metric_names(t["expr"]):
                used.add(name)
                if name not in exported and name != "up":
                    unknown.setdefault(name, []).append(p.get("title"))
    rep.check(not no_targets, f"every panel ({len(queried)}) has a query", f"without: {no_targets}")
    rep.check(not bad_ds, "every panel and target uses the ${datasource} variable", f"{bad_ds}")
    rep.check(not literal_ranges, "range selectors use $__rate_interval / $__range, not literal durations",
              f"{literal_ranges}")
    rep.check(not unknown, f"the dashboard names only metrics bouncer exports, plus up ({len(used)} names)",
              "; ".join(f"{n} in {t}" for n, t in unknown.items()))
    unused = sorted(n for n in exported - used
                    if not n.endswith(("_sum", "_count")) and n not in PROCESS_METRICS)
    if unused:
        rep.info(f"exported but on no panel: {', '.join(unused)}")
    return variables, queried


def alert_rules(alerts):
    for group in alerts.get("groups", []):
        for rule in group.get("rules", []):
            yield group.get("name"), rule.get("alert") or rule.get("record"), rule["expr"]


def check_alerts_static(rep, alerts, exported, promtool, alerts_path, alerts_test_path):
    unknown = {}
    for _, name, expr in alert_rules(alerts):
        for m in metric_names(expr):
            if m not in exported and m != "up":
                unknown.setdefault(m, []).append(name)
    rep.check(not unknown, "the alert rules name only metrics bouncer exports, plus up/absent",
              f"{unknown}")
    r = subprocess.run([promtool, "check", "rules", str(alerts_path)], capture_output=True, text=True)
    rep.check(r.returncode == 0, f"promtool check rules {alerts_path.relative_to(ROOT)}",
              (r.stdout + r.stderr).strip())
    if alerts_test_path.exists():
        r = subprocess.run([promtool, "test", "rules", str(alerts_test_path)], capture_output=True,
                           text=True)
        rep.check(r.returncode == 0, f"promtool test rules {alerts_test_path.relative_to(ROOT)}",
                  (r.stdout + r.stderr).strip()[-2000:])


# --------------------------------------------------------------------- the scenario


def event(n, kind, size=0):
    recipient = f"user{n}@example.org"
    tags = ["newsletter"]
    if kind == "failed":
        tags = ["campaign_X", "customer_Y"]
    elif kind == "deferred":
        recipient = f"user{n}@throttling.example"
    elif kind == "shadow":
        recipient = f"user{n}@disposable.example"
    mime = f"From: news@shop.example\r\nTo: {recipient}\r\nSubject: {n}\r\n\r\nHello!"
    if size:
        # Random, so that compression cannot bring it under the topic's limit.
        mime += base64.b64encode(os.urandom(size * 3 // 4)).decode()
    return json.dumps({
        "id": f"promcheck-{n}",
        "envelope": "bounces@mail.shop.example",
        "recipient": recipient,
        "pool": "dedicated-1",
        "ips": ["203.0.113.5"],
        "tags": tags,
        "maxdelivertime": "2099-01-01 00:00:00",
        "maxattempts": 5,
        "results": [],
        "mime": mime,
    })


class Feed:
    """Events to the input topic at a steady rate through one console
    producer, until stopped; `extra` lines go out with the next tick."""

    def __init__(self, procs, kafka_sh, topic, log, rate):
        self.proc = procs.spawn("producer", [
            kafka_sh, "produce", "--topic", topic, "--timeout", "20",
            "--reader-property", "parse.key=true",
        ], log, stdin=subprocess.PIPE)
        self.rate = rate
        self.sent = 0
        self.kinds = {}
        self.extra = queue.Queue()
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def kind(self, n):
        if n % 20 == 5:
            return "invalid"
        return {0: "failed", 1: "deferred", 2: "shadow"}.get(n % 10, "forwarded")

    def run(self):
        tick = 0.1
        per_tick = max(1, int(self.rate * tick))
        try:
            while not self.stop.is_set():
                lines = []
                while not self.extra.empty():
                    lines.append(self.extra.get())
                for _ in range(per_tick):
                    n = self.sent
                    kind = self.kind(n)
                    value = f"not json #{n}" if kind == "invalid" else event(n, kind)
                    lines.append(f"rcpt-{n % 23}\t{value}\n")
                    self.kinds[kind] = self.kinds.get(kind, 0) + 1
                    self.sent += 1
                self.proc.stdin.write("".join(lines).encode())
                self.proc.stdin.flush()
                self.stop.wait(tick)
        except (BrokenPipeError, OSError) as e:
            self.error = f"the console producer stopped: {e}"

    def send_extra(self, key, value):
        self.extra.put(f"{key}\t{value}\n")

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        try:
            self.proc.stdin.close()
        except OSError:
            pass


def produce_once(procs, kafka_sh, topic, line, log):
    """One record (KEY<TAB>VALUE) through a short-lived console producer."""
    p = procs.spawn("producer-once", [kafka_sh, "produce", "--topic", topic,
                                      "--reader-property", "parse.key=true"],
                    log, stdin=subprocess.PIPE)
    p.communicate(input=(line + "\n").encode(), timeout=60)
    return p.returncode


def create_topics(procs, kafka_sh, specs, log):
    started = []
    for name, partitions, configs in specs:
        cmd = [kafka_sh, "topics", "--create", "--topic", name, "--partitions", str(partitions)]
        for c in configs:
            cmd += ["--config", c]
        started.append((name, procs.spawn(f"topics {name}", cmd, log, stdin=subprocess.DEVNULL)))
    failed = [name for name, p in started if p.wait(timeout=120) != 0]
    if failed:
        raise Abort(f"could not create topics {failed} (see {log})")
    # The broker's metadata may lag the creation a little: bouncer refuses
    # to start while a topic is missing from it.
    want = {name: partitions for name, partitions, _ in specs}
    pattern = "|".join(re.escape(name) for name in want)

    def visible():
        r = subprocess.run([kafka_sh, "topics", "--describe", "--topic", pattern],
                           capture_output=True, text=True, timeout=60)
        leaders = {}
        for m in re.finditer(r"Topic: (\S+)\tPartition: \d+\tLeader: (-?\d+)", r.stdout):
            if int(m.group(2)) >= 0:
                leaders[m.group(1)] = leaders.get(m.group(1), 0) + 1
        return all(leaders.get(name) == n for name, n in want.items())
    wait_for("the new topics in the broker's metadata", visible, 30, 0.2)


def scenario(rep, args, procs, work, dashboard_vars, panels, alerts):
    name = f"promcheck-{os.getpid()}-{random.randrange(1 << 30):x}"
    topics = {
        "input": f"{name}.in", "forward": f"{name}.fwd", "results": f"{name}.results",
        "retry": f"{name}.retry", "dead_letter": f"{name}.dead", "control": f"{name}.rules",
    }
    group = f"{name}.group"

    rep.step("topics")
    t0 = time.monotonic()
    create_topics(procs, args.kafka_sh, [
        (topics["input"], 2, []),
        # Refuses the one oversized event of the produce-error trigger.
        (topics["forward"], 2, ["max.message.bytes=20000"]),
        (topics["results"], 2, []),
        (topics["retry"], 2, []),
        (topics["dead_letter"], 1, []),
        (topics["control"], 1, ["cleanup.policy=compact"]),
    ], work / "topics.log")
    rep.ok(f"created 6 topics {name}.* in {time.monotonic() - t0:.1f}s")

    rules_dir = work / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.toml").write_text(RULES)
    token = f"promcheck-{os.urandom(12).hex()}"
    (work / "tokens").write_text(f"promcheck:{token}\n")
    ports = {"prometheus": free_port(), "a": free_port(), "b": free_port()}

    def config(instance):
        path = work / f"bouncer-{instance}.toml"
        path.write_text(
            f'group = "{group}"\n'
            f'rules_dir = "{rules_dir}"\n'
            f'http_listen = "127.0.0.1:{ports[instance]}"\n'
            f'api_tokens_file = "{work / "tokens"}"\n'
            'shutdown_timeout = "10s"\n'
            'commit_interval = "500ms"\n'
            "[topics]\n" + "".join(f'{k} = "{v}"\n' for k, v in topics.items()) +
            "[kafka]\n"
            f'"bootstrap.servers" = "{args.bootstrap}"\n'
            "[kafka.consumer]\n"
            '"session.timeout.ms" = 6000\n'
            '"heartbeat.interval.ms" = 1000\n')
        return path

    rep.step("Prometheus and bouncer")
    prom_config = work / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(args.alerts)],
        "scrape_configs": [{
            "job_name": "bouncer",
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": [{"targets": [f"127.0.0.1:{ports['a']}", f"127.0.0.1:{ports['b']}"]}],
        }],
    }, sort_keys=False))
    prom_proc = procs.spawn("prometheus", [
        args.prometheus, f"--config.file={prom_config}", f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn",
    ], work / "prometheus.log", stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{ports['prometheus']}")

    def prom_ready():
        if prom_proc.poll() is not None:
            raise Abort(f"prometheus exited ({prom_proc.returncode}): {tail(work / 'prometheus.log')}")
        return http("GET", f"{prom.url}/-/ready")[0] == 200
    t0 = time.monotonic()
    wait_for("Prometheus /-/ready", prom_ready, 30)
    rep.ok(f"Prometheus {args.prometheus_version} ready on {prom.url} in {time.monotonic() - t0:.1f}s")

    t0 = time.monotonic()
    a = Bouncer(procs, args.bouncer, config("a"), ports["a"], work / "bouncer-a.log", "promcheck-a")
    a.wait_ready()
    rep.ok(f"bouncer A ready on {a.target} in {time.monotonic() - t0:.1f}s")
    wait_for("Prometheus to scrape bouncer A",
             lambda: prom.vector(f'up{{instance="{a.target}"}} == 1'), 20)

    feed = Feed(procs, args.kafka_sh, topics["input"], work / "producer.log", args.rate)
    feed_started = time.time()
    try:
        wait_for("bouncer A to decide events", lambda: a.processed() > 0, 60, 0.2)
        rep.ok(f"events flow ({args.rate}/s; {time.monotonic() - t0:.1f}s after A started)")
        triggers(rep, args, procs, work, prom, a, feed, topics, token, config, ports)
        rep.step("traffic until rate() has data")
        remaining = args.traffic_seconds - (time.time() - feed_started)
        if remaining > 0:
            rep.info(f"events keep flowing for {remaining:.0f}s more")
            time.sleep(remaining)
        if feed.error:
            raise Abort(feed.error)
        rep.ok(f"{feed.sent} events sent over {time.time() - feed_started:.0f}s: "
               + ", ".join(f"{k} {v}" for k, v in sorted(feed.kinds.items())))
        rep.step("evaluation (events still flowing)")
        evaluate(rep, prom, dashboard_vars, panels, alerts, feed_started, a, args)
    finally:
        feed.close()


def tail(path, n=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def triggers(rep, args, procs, work, prom, a, feed, topics, token, config, ports):
    auth = {"Authorization": f"Bearer {token}"}

    # ---- an API change: POST, then DELETE, on /v1/errors.
    rep.step("trigger: an API change")
    code, text = http("POST", a.url("/v1/errors"), {"code": 550, "tag": "campaign_api",
                                                    "description": "prometheus-check"}, auth)
    if code != 201:
        raise Abort(f"POST /v1/errors answered {code}: {text[:300]}")
    rule_id = json.loads(text)["id"]
    code, text = http("DELETE", a.url(f"/v1/errors/{urllib.parse.quote(rule_id)}"), None, auth)
    rep.check(code == 204, f"POST /v1/errors -> 201 ({rule_id}), DELETE -> {code}", text[:200])
    wait_for("the API requests in Prometheus", lambda: prom.vector(
        f'bouncer_api_requests_total{{instance="{a.target}", route="/v1/errors/{{id}}", method="DELETE", status="204"}}'), 15)
    rep.ok("bouncer_api_requests_total counts them by route template (/v1/errors, /v1/errors/{id})")

    # ---- an invalid control record.
    rep.step("trigger: an invalid control record")
    rc = produce_once(procs, args.kafka_sh, topics["control"], "api-bogus\tnot a rule",
                      work / "producer-control.log")
    if rc != 0:
        raise Abort(f"could not produce to the control topic: {tail(work / 'producer-control.log')}")
    wait_for("bouncer_control_records_rejected_total >= 1", lambda: (
        sample(a.metrics(), "bouncer_control_records_rejected_total") or 0) >= 1, 20, 0.2)
    rep.ok("bouncer_control_records_rejected_total counts the invalid control record")

    # ---- a broken rule file, then fixed.
    rep.step("trigger: a broken rule file")
    before = sample(a.metrics(), "bouncer_rules_reload_total", result="failure") or 0
    (work / "rules" / "broken.toml").write_text(BROKEN_RULE)
    t0 = time.monotonic()
    wait_for("bouncer_rules_last_reload_successful 0 on /metrics", lambda: sample(
        a.metrics(), "bouncer_rules_last_reload_successful") == 0, 20, 0.1)
    rep.ok(f"a broken rule file sets bouncer_rules_last_reload_successful to 0 "
           f"({time.monotonic() - t0:.1f}s after the write)")
    s = a.metrics()
    rep.check((sample(s, "bouncer_rules_reload_total", result="failure") or 0) > before,
              "bouncer_rules_reload_total{result=\"failure\"} counts the failure")
    status = a.status() or {}
    reload = json.dumps(status.get("rules", {}).get("reload", {}))
    rep.check(re.search(r"broken\.toml:\d+:\d+", reload) is not None,
              "/status names the error as broken.toml:LINE:COL", reload[:300])
    rep.check(sample(s, "bouncer_rules_active", source="file") == 3,
              "the previous rule set stays in force (3 file rules)")
    wait_for("Prometheus to see the failed reload", lambda: prom.vector(
        f'bouncer_rules_last_reload_successful{{instance="{a.target}"}} == 0'), 15)
    wait_for("alert BouncerRulesReloadFailing pending", lambda: prom.vector(
        f'ALERTS{{alertname="BouncerRulesReloadFailing", instance="{a.target}"}}'), 15)
    rep.ok("Prometheus sees it and BouncerRulesReloadFailing goes pending")
    time.sleep(4)  # long enough for the panels' range queries to show it
    (work / "rules" / "broken.toml").write_text(FIXED_RULE)
    wait_for("bouncer_rules_last_reload_successful back to 1", lambda: sample(
        a.metrics(), "bouncer_rules_last_reload_successful") == 1, 20, 0.1)
    rep.check(sample(a.metrics(), "bouncer_rules_active", source="file") == 4,
              "fixing the file reloads: bouncer_rules_last_reload_successful 1, 4 file rules")

    # ---- a record the forward topic refuses: a produce error.
    rep.step("trigger: a produce error (an event larger than the forward topic takes)")
    feed.send_extra("big-one", event(10**9, "forwarded", size=60_000))
    wait_for("bouncer_produce_errors_total on the forward topic", lambda: (sample(
        a.metrics(), "bouncer_produce_errors_total", topic=topics["forward"]) or 0) >= 1, 30, 0.2)
    rep.ok("bouncer_produce_errors_total{topic=forward, kind=permanent} counts the refused record")

    # ---- invalid events come with the feed (every 20th is not JSON).
    wait_for("invalid events counted", lambda: (sample(
        a.metrics(), "bouncer_events_total", outcome="invalid") or 0) >= 1, 20, 0.2)
    rep.ok("invalid (non-JSON) events count as bouncer_events_total{outcome=\"invalid\"}")

    # ---- a rebalance: B joins, then leaves on SIGTERM.
    rep.step("trigger: a rebalance (a second instance joins the group, then leaves)")
    t0 = time.monotonic()
    wait_for("A to own both partitions", lambda: a.assigned() == [0, 1], 30, 0.2)
    wait_for("A's lag series for both partitions", lambda: all(
        sample(a.metrics(), "bouncer_consumer_lag", partition=str(p)) is not None for p in (0, 1)), 15, 0.2)
    b = Bouncer(procs, args.bouncer, config("b"), ports["b"], work / "bouncer-b.log", "promcheck-b")
    b.wait_ready()
    wait_for("the partitions split between A and B",
             lambda: len(a.assigned()) == 1 and len(b.assigned()) == 1, 45, 0.2)
    (kept,), (moved,) = a.assigned(), b.assigned()
    rep.ok(f"B joined: A keeps partition {kept}, B takes partition {moved} "
           f"({time.monotonic() - t0:.1f}s)")
    absent = []
    for _ in range(6):
        absent.append(sample(a.metrics(), "bouncer_consumer_lag", partition=str(moved)) is None)
        time.sleep(0.3)
    rep.check(all(absent), f"the revoked partition's lag series is gone from A "
              f"(bouncer_consumer_lag{{partition=\"{moved}\"}} absent in 6 scrapes over 2s)",
              f"present in {absent.count(False)} of 6")
    rep.check(sample(a.metrics(), "bouncer_consumer_lag", partition=str(kept)) is not None,
              f"A keeps the lag series of partition {kept}")
    wait_for("B's lag series", lambda: sample(
        b.metrics(), "bouncer_consumer_lag", partition=str(moved)) is not None, 15, 0.2)
    wait_for("Prometheus: partition lag on B only", lambda: prom.vector(
        f'bouncer_consumer_lag{{instance="{b.target}", partition="{moved}"}}') and not prom.vector(
        f'bouncer_consumer_lag{{instance="{a.target}", partition="{moved}"}}'), 15, 0.2)
    rep.ok("Prometheus: the moved partition's lag series is B's, A's went stale")
    wait_for("B to decide events", lambda: b.processed() > 0, 30, 0.2)
    s = a.metrics()
    rep.check((sample(s, "bouncer_rebalances_total", kind="revoke") or 0) >= 1,
              "bouncer_rebalances_total{kind=\"revoke\"} on A")
    b.proc.send_signal(signal.SIGTERM)
    try:
        rc = b.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise Abort("B did not exit within 30s of SIGTERM")
    rep.check(rc == 0, f"B exits 0 on SIGTERM (exit {rc})", b.tail())
    wait_for("A to own both partitions again", lambda: a.assigned() == [0, 1], 45, 0.2)
    wait_for("A's lag series for both partitions again", lambda: all(
        sample(a.metrics(), "bouncer_consumer_lag", partition=str(p)) is not None for p in (0, 1)), 15, 0.2)
    rep.ok(f"B left: A owns both partitions and their lag series again ({time.monotonic() - t0:.1f}s "
           "for the whole rebalance trigger)")


def evaluate(rep, prom, dashboard_vars, panels, alerts, start, a, args):
    now = time.time()
    t_eval = time.monotonic()
    variables = {name for name, v in dashboard_vars.items() if v.get("type") != "datasource"}
    variables |= {"datasource"}

    # ---- template variables through the label API.
    for name, v in dashboard_vars.items():
        if v.get("type") != "query":
            continue
        query = v.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?([a-zA-Z_]\w*)\s*\)\s*", query or "")
        if not m:
            rep.fail(f"variable {name}: cannot resolve {query!r} (only label_values() is supported)")
            continue
        match, label = m.group(1), m.group(2)
        if match:
            match, _ = substitute(match, variables)
        answer = prom.label_values(label, match, start - 60, now)
        values = answer.get("data") or []
        rep.check(answer.get("status") == "success" and values,
                  f"variable {name} = label_values({m.group(1) or ''}{', ' if m.group(1) else ''}{label}): "
                  f"{len(values)} values {values[:6]}", answer.get("error", "no values"))

    # ---- every target of every panel.
    for p in panels:
        for t in p.get("targets", []):
            if not t.get("expr") or t.get("hide"):
                continue
            what = f"panel \"{p.get('title')}\" [{t.get('refId')}]"
            expr, problems = substitute(t["expr"], variables)
            if problems:
                rep.fail(f"{what}: {'; '.join(problems)}")
                continue
            answer = prom.query(expr, now)
            if answer.get("status") != "success":
                rep.fail(f"{what}: {answer.get('errorType', '')} {answer.get('error')}\n       {expr}")
                continue
            n = result_size(answer)
            extra, values = range_summary(prom.query_range(expr, start, now, "1s"))
            names = metric_names(expr)
            shows = [why for m, why in TRIGGERED.items() if m in names]
            if not n:
                rep.fail(f"{what}: no data ({extra})\n       {expr}")
            elif shows and not any(v > 0 for v in values):
                rep.fail(f"{what}: data, but never shows {shows[0]} ({extra})\n       {expr}")
            elif "bouncer_rules_last_reload_successful" in names and len(set(values)) < 2:
                rep.fail(f"{what}: data, but never shows the failed reload ({extra})\n       {expr}")
            else:
                rep.ok(f"{what}: {n} series now ({extra})")

    # ---- every alert rule.
    for group, name, expr in alert_rules(alerts):
        answer = prom.query(expr, now)
        if answer.get("status") != "success":
            rep.fail(f"alert {name}: {answer.get('errorType', '')} {answer.get('error')}")
        else:
            rep.ok(f"alert {name}: parses and evaluates ({result_size(answer)} series now)")
    code, text = http("GET", f"{prom.url}/api/v1/rules")
    groups = json.loads(text).get("data", {}).get("groups", []) if code == 200 else []
    rules = [r for g in groups for r in g.get("rules", [])]
    unhealthy = [f"{r.get('name')}: {r.get('health')} {r.get('lastError', '')}" for r in rules
                 if r.get("health") != "ok"]
    expected = sum(1 for _ in alert_rules(alerts))
    rep.check(len(rules) == expected and not unhealthy,
              f"Prometheus loaded dashboards/alerts.yaml: {len(rules)} of {expected} rules, all healthy",
              f"{unhealthy}")
    seen = prom.vector(f'max by (alertname, alertstate) (max_over_time(ALERTS[{int(now - start) + 60}s]))')
    states = sorted(f"{s['metric']['alertname']}={s['metric']['alertstate']}" for s in seen)
    rep.info(f"alerts seen during the run: {', '.join(states) or 'none'}")
    names = {s["metric"]["alertname"] for s in seen}
    rep.check("BouncerRulesReloadFailing" in names, "the broken rule file made BouncerRulesReloadFailing pending")
    rep.check("BouncerDown" in names, "the instance that left made BouncerDown pending (up == 0)")

    # ---- what /metrics offers against what src/metrics.rs defines.
    live = {n for n, _, _ in parse_exposition(a.metrics_text())}
    never = sorted(n for n in args.exported - live if not n.startswith("process_"))
    if never:
        rep.info(f"defined in src/metrics.rs but absent from A's /metrics at the end: {', '.join(never)}")
    stalled = prom.vector(f"max_over_time(bouncer_consumer_stalled[{int(now - start) + 60}s])")
    peak = max((float(s["value"][1]) for s in stalled), default=0)
    rep.info(f"bouncer_consumer_stalled over the run: max {peak:g}")
    rep.info(f"evaluation took {time.monotonic() - t_eval:.1f}s")


# --------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bouncer", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--promtool", required=True)
    ap.add_argument("--kafka-sh", default=str(ROOT / "scripts" / "kafka.sh"))
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--dashboard", type=Path, default=ROOT / "dashboards" / "bouncer.json")
    ap.add_argument("--alerts", type=Path, default=ROOT / "dashboards" / "alerts.yaml")
    ap.add_argument("--metrics-rs", type=Path, default=ROOT / "src" / "metrics.rs")
    ap.add_argument("--traffic-seconds", type=float, default=60,
                    help="events flow at least this long before the evaluation")
    ap.add_argument("--rate", type=int, default=50, help="events per second")
    ap.add_argument("--deadline", type=float, default=220, help="give up after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, TSDB)")
    ap.add_argument("--setup-seconds", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.dashboard, args.alerts = args.dashboard.resolve(), args.alerts.resolve()
    args.prometheus_version = subprocess.run(
        [args.prometheus, "--version"], capture_output=True, text=True).stdout.split("\n")[0].split(" ")[2:3]
    args.prometheus_version = (args.prometheus_version or ["?"])[0]

    rep = Report()
    procs = Processes()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    def on_alarm(_signum, _frame):
        raise Abort(f"the check ran over its {args.deadline:.0f}s deadline")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.deadline))

    work = Path(tempfile.mkdtemp(prefix="bouncer-promcheck-"))
    code = 1
    try:
        rep.step("static checks")
        dashboard = json.loads(args.dashboard.read_text())
        alerts = yaml.safe_load(args.alerts.read_text())
        args.exported = exported_metrics(args.metrics_rs)
        variables, panels = check_dashboard_static(rep, dashboard, args.exported)
        check_alerts_static(rep, alerts, args.exported, args.promtool, args.alerts,
                            args.alerts.parent / "alerts_test.yaml")
        scenario(rep, args, procs, work, variables, panels, alerts)
        code = 0
    except Abort as e:
        rep.fail(f"scenario aborted: {e}")
    except KeyboardInterrupt as e:
        rep.fail(f"interrupted ({e})")
    finally:
        signal.alarm(0)
        procs.stop_all()
        if rep.failed:
            for log in ("bouncer-a.log", "bouncer-b.log", "prometheus.log", "producer.log", "topics.log"):
                text = tail(work / log, 25)
                if text:
                    print(f"\n---- last lines of {log} ----\n{text}")
        if args.keep:
            print(f"\nwork directory kept: {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)])
    print(f"\nprometheus-check: {time.monotonic() - rep.started:.0f}s (plus {args.setup_seconds}s of setup)")
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
