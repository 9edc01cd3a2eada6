#!/usr/bin/env bash
# The test command: installs what the tests need, starts a real single-node
# Apache Kafka broker on 127.0.0.1 (scripts/kafka.sh), runs the whole test
# suite against it, and stops the broker again. Extra arguments go to
# `cargo test` (e.g. scripts/test.sh --test reload).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Kafka tests share one broker: they use unique topic and group names, and
# run one test binary at a time.
export KAFKA_DIR="${KAFKA_DIR:-/tmp/bouncer-test-kafka}"
scripts/kafka.sh start
trap 'scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT
eval "$(scripts/kafka.sh env)"
export KAFKA_BOOTSTRAP

cargo test --locked "$@"
