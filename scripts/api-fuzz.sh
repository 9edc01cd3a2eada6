#!/usr/bin/env bash
# Property-based test of the REST API against its OpenAPI document
# (src/api/openapi.json) with schemathesis: a real bouncer on the real broker,
# random valid and invalid requests, and the check that no request ever gets
# a server error (5xx). Needs the broker: run scripts/kafka.sh start first
# (scripts/test.sh and .ci/run do). Usage: scripts/api-fuzz.sh [MAX_EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-60}"
version=4.32.5
venv="${BOUNCER_CACHE:-$HOME/.cache/bouncer}/schemathesis-$version"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi

eval "$(scripts/kafka.sh env)"
cargo build --locked --quiet
work=$(mktemp -d)
name="apifuzz-$$-$RANDOM"
for t in in fwd results retry dead; do
  scripts/kafka.sh topics --create --topic "$name.$t" --partitions 1 >/dev/null
done
# The controller has them; a broker still catching up on its metadata (just
# restarted, thousands of partitions) may not list them for a few seconds,
# and bouncer refuses to start on a topic its broker does not know.
for _ in $(seq 1 30); do
  listed=$(scripts/kafka.sh topics --list 2>/dev/null | grep -c "^$name\.\(in\|fwd\|results\|retry\|dead\)$" || true)
  [ "$listed" -eq 5 ] && break
  sleep 1
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
write_token="fuzz-write-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
read_token="fuzz-read-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
printf 'fuzzer:%s\nviewer:%s:read\n' "$write_token" "$read_token" > "$work/tokens"
mkdir "$work/rules"
cp -r rules/. "$work/rules/"
cat > "$work/bouncer.toml" <<TOML
group = "$name"
rules_dir = "$work/rules"
http_listen = "127.0.0.1:$port"
api_tokens_file = "$work/tokens"
[topics]
input = "$name.in"
forward = "$name.fwd"
results = "$name.results"
retry = "$name.retry"
dead_letter = "$name.dead"
control = "$name.rules"
[kafka]
"bootstrap.servers" = "$KAFKA_BOOTSTRAP"
TOML
target/debug/bouncer run --config "$work/bouncer.toml" > "$work/bouncer.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/bouncer.log"; exit 1; fi
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "bouncer never became ready"; cat "$work/bouncer.log"; exit 1; }

status=0
for token in "$write_token" "$read_token"; do
  "$venv/bin/schemathesis" run src/api/openapi.json \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error \
    --max-examples "$examples" \
    --no-color || status=$?
done
if grep -q "panicked" "$work/bouncer.log"; then
  echo "bouncer panicked during the run:"; grep -A5 panicked "$work/bouncer.log"; status=1
fi
exit "$status"
