#!/usr/bin/env bash
# scripts/kafka.sh - a real single-node Apache Kafka broker for bouncer's
# integration tests.
#
# The broker runs in KRaft mode (combined broker + controller, node.id=1) on
# 127.0.0.1 only. Its jars are resolved from Maven Central with `mvn` (no
# tarball download) and cached, so only the first `fetch` touches the network.
#
# Usage: scripts/kafka.sh COMMAND [ARGS...]
#
#   fetch             resolve the Kafka jars into the cache (no-op when cached)
#   start             fetch if needed, write the config, format the storage on
#                     first use, start the broker in the background and wait
#                     until it answers. Idempotent: does nothing when the broker
#                     is already running and answering.
#   stop              SIGTERM the broker started by this script, wait for it to
#                     exit, SIGKILL it after $KAFKA_STOP_TIMEOUT seconds.
#   kill              SIGKILL the broker at once (crash simulation for fault
#                     tests; the data is kept and recovered by the next start).
#   restart           stop, then start again; the data (topics, offsets) is kept.
#   reset             stop, then delete the data, log and config of $KAFKA_DIR.
#   status            exit 0 if the broker on $KAFKA_BOOTSTRAP answers, else 1.
#   env               print shell exports (KAFKA_BOOTSTRAP=127.0.0.1:PORT, ...);
#                     use as: eval "$(scripts/kafka.sh env)"
#   log [N]           print the last N (default 100) lines of the broker log.
#   run-class CLASS [ARGS...]
#                     run any Java main class on the Kafka classpath, e.g.
#                     run-class org.apache.kafka.tools.TopicCommand \
#                         --bootstrap-server 127.0.0.1:9092 --list
#
#   Admin-tool shortcuts; each adds `--bootstrap-server $KAFKA_BOOTSTRAP`
#   unless the arguments already contain --bootstrap-server:
#   topics ARGS       org.apache.kafka.tools.TopicCommand (kafka-topics.sh)
#   groups ARGS       org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#   configs ARGS      org.apache.kafka.tools.ConfigCommand (kafka-configs.sh)
#   produce ARGS      org.apache.kafka.tools.ConsoleProducer
#   consume ARGS      org.apache.kafka.tools.consumer.ConsoleConsumer
#   offsets ARGS      org.apache.kafka.tools.GetOffsetShell
#   transactions ARGS org.apache.kafka.tools.TransactionsCommand
#   delete-records ARGS  org.apache.kafka.tools.DeleteRecordsCommand
#   api-versions ARGS org.apache.kafka.tools.BrokerApiVersionsCommand
#   dump-log ARGS     org.apache.kafka.tools.DumpLogSegments (no bootstrap added)
#
# Examples:
#   scripts/kafka.sh start
#   scripts/kafka.sh topics --create --topic in --partitions 3
#   scripts/kafka.sh topics --create --topic state --partitions 1 \
#       --config cleanup.policy=compact --config segment.ms=100 \
#       --config min.cleanable.dirty.ratio=0.01
#   scripts/kafka.sh topics --describe --topic in
#   scripts/kafka.sh configs --entity-type topics --entity-name state --describe
#   eval "$(scripts/kafka.sh env)"; echo "$KAFKA_BOOTSTRAP"
#   scripts/kafka.sh restart     # fault tests: bounce the broker, keep data
#   scripts/kafka.sh stop
#
# Environment (all optional):
#   KAFKA_VERSION          Kafka release to use (default: 4.4.0, pinned)
#   KAFKA_LOG4J_VERSION    log4j2 version for the logging binding (default:
#                          2.25.5, the one Kafka 4.4.0 is built with)
#   BOUNCER_CACHE          cache root (default: $HOME/.cache/bouncer)
#   KAFKA_CACHE_DIR        jar cache (default: $BOUNCER_CACHE/kafka-$KAFKA_VERSION;
#                          the jars live in its libs/ subdirectory)
#   KAFKA_DIR              data dir: config, storage, pid file, broker.log
#                          (default: /tmp/bouncer-kafka)
#   KAFKA_PORT             client (PLAINTEXT) port (default: 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default: 9093)
#   KAFKA_HEAP_OPTS        broker heap (default: -Xmx512m -Xms256m)
#   KAFKA_JVM_OPTS         extra JVM options for the broker
#   KAFKA_LOG_LEVEL        broker root log level (default: INFO)
#   KAFKA_EXTRA_CONFIG     extra server.properties lines (newline-separated
#                          key=value), appended last so they win
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default: 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default: 30)
#   KAFKA_MVN_ARGS         extra arguments for mvn (e.g. -Dmaven.repo.local=DIR)
#   JAVA_HOME / JAVA       the java to use (default: java on PATH; needs >= 17)
#
# Files in $KAFKA_DIR: server.properties, log4j2.xml, data/ (log.dirs, also
# the KRaft metadata log), broker.log (broker stdout+stderr and log4j output,
# appended across starts), kafka.pid, cluster.id, version, .lock.
#
# Exit status: 0 on success, 1 on failure (status: 1 = not answering),
# 2 on a usage error.

set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_LOG4J_VERSION="${KAFKA_LOG4J_VERSION:-2.25.5}"
SCALA_BINARY_VERSION="2.13"
# Pinned so that a fresh machine resolves the same plugin (works with Maven 3.8).
MVN_DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

BOUNCER_CACHE="${BOUNCER_CACHE:-${HOME:-/tmp}/.cache/bouncer}"
KAFKA_CACHE_DIR="${KAFKA_CACHE_DIR:-$BOUNCER_CACHE/kafka-$KAFKA_VERSION}"
KAFKA_LIBS="$KAFKA_CACHE_DIR/libs"
KAFKA_DIR="${KAFKA_DIR:-/tmp/bouncer-kafka}"
KAFKA_HOST="127.0.0.1"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-}"
KAFKA_LOG_LEVEL="${KAFKA_LOG_LEVEL:-INFO}"
KAFKA_EXTRA_CONFIG="${KAFKA_EXTRA_CONFIG:-}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
KAFKA_MVN_ARGS="${KAFKA_MVN_ARGS:-}"

if [[ -n "${JAVA:-}" ]]; then
    :
elif [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
else
    JAVA="java"
fi

CONFIG_FILE="$KAFKA_DIR/server.properties"
LOG4J_FILE="$KAFKA_DIR/log4j2.xml"
DATA_DIR="$KAFKA_DIR/data"
LOG_FILE="$KAFKA_DIR/broker.log"
PID_FILE="$KAFKA_DIR/kafka.pid"
CLUSTER_ID_FILE="$KAFKA_DIR/cluster.id"
VERSION_FILE="$KAFKA_DIR/version"
LOCK_FILE="$KAFKA_DIR/.lock"
TOOLS_LOG4J_FILE="$KAFKA_CACHE_DIR/tools-log4j2.xml"
PROBE_CONFIG_FILE="$KAFKA_CACHE_DIR/probe-admin.properties"
FETCH_MARKER="$KAFKA_CACHE_DIR/.complete"

# JVM flags for the short-lived admin tools: start fast, stay small.
TOOLS_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -Dlog4j2.shutdownHookEnabled=false
    -Djava.awt.headless=true)

SELF="$(basename "$0")"

log() { printf '%s: %s\n' "$SELF" "$*" >&2; }
die() { printf '%s: error: %s\n' "$SELF" "$*" >&2; exit 1; }

usage() {
    # Print the comment block at the top of this file.
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit "${1:-2}"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

check_settings() {
    is_uint "$KAFKA_PORT" || die "KAFKA_PORT must be a port number, got '$KAFKA_PORT'"
    is_uint "$KAFKA_CONTROLLER_PORT" ||
        die "KAFKA_CONTROLLER_PORT must be a port number, got '$KAFKA_CONTROLLER_PORT'"
    [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] ||
        die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ (both $KAFKA_PORT)"
    is_uint "$KAFKA_START_TIMEOUT" || die "KAFKA_START_TIMEOUT must be a number of seconds"
    is_uint "$KAFKA_STOP_TIMEOUT" || die "KAFKA_STOP_TIMEOUT must be a number of seconds"
    [[ "$KAFKA_DIR" == /* ]] || die "KAFKA_DIR must be an absolute path, got '$KAFKA_DIR'"
    case "$KAFKA_DIR" in
        / | /tmp | /tmp/ | /root | /home | "${HOME:-/root}") die "refusing KAFKA_DIR=$KAFKA_DIR" ;;
    esac
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH${2:+ ($2)}"
}

check_java() {
    need_cmd "$JAVA" "install a Java 17+ runtime or set JAVA_HOME"
    local spec
    spec="$("$JAVA" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p')" || true
    [[ -n "$spec" ]] || die "could not determine the version of '$JAVA'"
    [[ "$spec" != 1.* && "${spec%%.*}" -ge 17 ]] ||
        die "Kafka $KAFKA_VERSION needs Java 17 or newer; '$JAVA' is Java $spec"
}

# ---------------------------------------------------------------------------
# fetch: resolve the broker, the admin tools and a log4j2 binding with mvn.
# ---------------------------------------------------------------------------

generate_pom() {
    cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh: the runtime classpath of a Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.bouncer</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- kafka.Kafka, kafka.tools.StorageTool, kafka-server, kafka-storage, raft, coordinators -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- the admin CLIs (TopicCommand, ConfigCommand, ...); Connect is not needed -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <!-- Kafka logs through slf4j 1.7; route it to log4j2 (what the distribution ships) -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

write_tools_files() {
    # Admin client settings for the readiness probe: give up quickly.
    if [[ ! -f "$PROBE_CONFIG_FILE" ]]; then
        printf '%s\n' "request.timeout.ms=5000" "default.api.timeout.ms=8000" \
            "socket.connection.setup.timeout.ms=2000" \
            "socket.connection.setup.timeout.max.ms=2000" >"$PROBE_CONFIG_FILE.tmp.$$"
        mv -f "$PROBE_CONFIG_FILE.tmp.$$" "$PROBE_CONFIG_FILE"
    fi
    # Admin tools: warnings and errors on stderr, nothing else.
    [[ -f "$TOOLS_LOG4J_FILE" ]] && return 0
    local tmp="$TOOLS_LOG4J_FILE.tmp.$$"
    cat >"$tmp" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDERR" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="STDERR"/></Root>
  </Loggers>
</Configuration>
EOF
    mv -f "$tmp" "$TOOLS_LOG4J_FILE"
}

fetched() {
    # The marker holds a hash of the pom, so a changed dependency list refetches.
    [[ -f "$FETCH_MARKER" && -d "$KAFKA_LIBS" ]] || return 1
    [[ "$(cat "$FETCH_MARKER")" == "$(generate_pom | sha256sum | cut -d' ' -f1)" ]]
}

ensure_fetched() {
    if fetched; then
        write_tools_files
        return 0
    fi
    mkdir -p "$KAFKA_CACHE_DIR"
    # Serialize concurrent fetches; fd 8 is closed again before anything runs.
    exec 8>"$KAFKA_CACHE_DIR/.fetch.lock"
    flock -w 900 8 || die "timed out waiting for another fetch (lock $KAFKA_CACHE_DIR/.fetch.lock)"
    if ! fetched; then
        do_fetch
    fi
    exec 8>&-
    write_tools_files
}

do_fetch() {
    need_cmd mvn "install Maven 3.x"
    check_java
    local pom="$KAFKA_CACHE_DIR/pom.xml"
    local out="$KAFKA_CACHE_DIR/libs.tmp.$$"
    local mvn_log="$KAFKA_CACHE_DIR/mvn.log"
    local start=$SECONDS
    generate_pom >"$pom"
    rm -rf "$out"
    log "resolving Kafka $KAFKA_VERSION (kafka_$SCALA_BINARY_VERSION, kafka-tools, log4j $KAFKA_LOG4J_VERSION) from Maven Central..."
    local -a extra=()
    if [[ -n "$KAFKA_MVN_ARGS" ]]; then
        read -r -a extra <<<"$KAFKA_MVN_ARGS"
    fi
    if ! mvn -B -q -f "$pom" "${extra[@]}" \
        "$MVN_DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$out" >"$mvn_log" 2>&1; then
        tail -n 40 "$mvn_log" >&2 || true
        rm -rf "$out"
        die "mvn could not resolve Kafka $KAFKA_VERSION (full output: $mvn_log)"
    fi
    local jar
    for jar in "kafka_$SCALA_BINARY_VERSION-$KAFKA_VERSION.jar" "kafka-tools-$KAFKA_VERSION.jar" \
        "kafka-server-$KAFKA_VERSION.jar" "kafka-storage-$KAFKA_VERSION.jar" \
        "kafka-clients-$KAFKA_VERSION.jar" "log4j-core-$KAFKA_LOG4J_VERSION.jar" \
        "log4j-slf4j-impl-$KAFKA_LOG4J_VERSION.jar"; do
        if [[ ! -f "$out/$jar" ]]; then
            rm -rf "$out"
            die "mvn finished but $jar is missing from the resolved classpath"
        fi
    done
    rm -rf "$KAFKA_LIBS"
    mv "$out" "$KAFKA_LIBS"
    generate_pom | sha256sum | cut -d' ' -f1 >"$FETCH_MARKER"
    log "fetched $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$KAFKA_LIBS" | cut -f1)) into $KAFKA_LIBS in $((SECONDS - start))s"
}

# ---------------------------------------------------------------------------
# Processes, ports and readiness.
# ---------------------------------------------------------------------------

# True if PID is a live broker started with this $KAFKA_DIR's config.
is_our_broker() {
    local pid="$1"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    grep -qzxF -e "$CONFIG_FILE" "/proc/$pid/cmdline" 2>/dev/null &&
        grep -qzxF -e "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null
}

# Print the pid of our broker (from the pid file, else by scanning /proc for a
# kafka.Kafka process with exactly our config file), or fail.
broker_pid() {
    local pid=""
    if [[ -f "$PID_FILE" ]]; then
        pid="$(cat "$PID_FILE" 2>/dev/null || true)"
        if is_our_broker "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    # One grep over all command lines, then check the few candidates.
    local file
    while IFS= read -r file; do
        pid="${file#/proc/}"
        pid="${pid%/cmdline}"
        if is_our_broker "$pid"; then
            echo "$pid" >"$PID_FILE" 2>/dev/null || true
            echo "$pid"
            return 0
        fi
    done < <(grep -lzxF -e "$CONFIG_FILE" /proc/[0-9]*/cmdline 2>/dev/null || true)
    return 1
}

port_open() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$KAFKA_HOST" "$1" 2>/dev/null
}

# Run a Kafka main class with the tools' JVM flags (no exec).
java_tool() {
    local class="$1"
    shift
    "$JAVA" "${TOOLS_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$TOOLS_LOG4J_FILE" \
        -cp "$KAFKA_LIBS/*" "$class" "$@"
}

# True if the broker answers a metadata request and reports itself (node 1) as
# an unfenced broker, i.e. topics can be created and produced to.
answering() {
    port_open "$KAFKA_PORT" || return 1
    local out
    out="$(timeout 30 "$JAVA" "${TOOLS_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$TOOLS_LOG4J_FILE" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$PROBE_CONFIG_FILE" 2>/dev/null)" ||
        return 1
    grep -q "(id: 1 " <<<"$out" && ! grep -q "isFenced: true" <<<"$out"
}

print_log_tail() {
    if [[ -f "$LOG_FILE" ]]; then
        log "last 60 lines of $LOG_FILE:"
        tail -n 60 "$LOG_FILE" >&2 || true
    fi
}

wait_ready() {
    local pid="$1" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! is_our_broker "$pid"; then
            print_log_tail
            rm -f "$PID_FILE"
            die "the broker (pid $pid) exited during startup; see $LOG_FILE"
        fi
        if answering; then
            return 0
        fi
        sleep 0.5
    done
    print_log_tail
    die "the broker (pid $pid) did not answer on $KAFKA_BOOTSTRAP within ${KAFKA_START_TIMEOUT}s; it is left running (stop it with: $0 stop); see $LOG_FILE"
}

# ---------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------

write_server_properties() {
    local tmp="$CONFIG_FILE.tmp.$$"
    cat >"$tmp" <<EOF
# Generated by scripts/kafka.sh on each start; edits are overwritten.
# Single-node KRaft broker+controller for bouncer's integration tests.

process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT

log.dirs=$DATA_DIR

# After a crash (kill), the restarted broker can only re-register once the
# controller has expired its previous session: keep that short (default 9 s).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500

# Small machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4

# Topics are created explicitly by the tests.
auto.create.topics.enable=false
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# Internal topics on a single broker: RF 1 and few partitions (fast to create).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1

# Consumer groups: no join delay; allow short session timeouts in tests.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
# KIP-848 (group.protocol=consumer) groups: short broker-side timeouts.
group.consumer.min.session.timeout.ms=1000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000

# Transactions: abort timed-out transactions quickly.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000

# Retention and compaction: check often so tests do not wait long.
log.retention.check.interval.ms=5000
log.initial.task.delay.ms=1000
log.segment.delete.delay.ms=1000
log.cleaner.enable=true
log.cleaner.threads=1
log.cleaner.backoff.ms=500
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.io.buffer.size=524288
EOF
    if [[ -n "$KAFKA_EXTRA_CONFIG" ]]; then
        printf '\n# From KAFKA_EXTRA_CONFIG.\n%s\n' "$KAFKA_EXTRA_CONFIG" >>"$tmp"
    fi
    mv -f "$tmp" "$CONFIG_FILE"
}

write_broker_log4j() {
    local tmp="$LOG4J_FILE.tmp.$$"
    cat >"$tmp" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh: broker logging goes to stdout = $LOG_FILE -->
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="$KAFKA_LOG_LEVEL"><AppenderRef ref="STDOUT"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
    mv -f "$tmp" "$LOG4J_FILE"
}

format_storage_if_needed() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        local formatted_with=""
        [[ -f "$VERSION_FILE" ]] && formatted_with="$(cat "$VERSION_FILE")"
        if [[ -n "$formatted_with" && "$formatted_with" != "$KAFKA_VERSION" ]]; then
            die "$DATA_DIR was formatted by Kafka $formatted_with, not $KAFKA_VERSION; run '$0 reset' first"
        fi
        return 0
    fi
    local cluster_id=""
    [[ -f "$CLUSTER_ID_FILE" ]] && cluster_id="$(cat "$CLUSTER_ID_FILE")"
    if [[ -z "$cluster_id" ]]; then
        cluster_id="$(java_tool kafka.tools.StorageTool random-uuid 2>>"$LOG_FILE")" ||
            die "could not generate a cluster id (kafka.tools.StorageTool random-uuid); see $LOG_FILE"
        echo "$cluster_id" >"$CLUSTER_ID_FILE"
    fi
    mkdir -p "$DATA_DIR"
    log "formatting $DATA_DIR (cluster id $cluster_id)"
    if ! java_tool kafka.tools.StorageTool format --cluster-id "$cluster_id" \
        --config "$CONFIG_FILE" >>"$LOG_FILE" 2>&1; then
        print_log_tail
        die "formatting the storage in $DATA_DIR failed"
    fi
    echo "$KAFKA_VERSION" >"$VERSION_FILE"
}

# ---------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------

lock_dir() {
    mkdir -p "$KAFKA_DIR"
    exec 9>"$LOCK_FILE"
    flock -w 300 9 || die "timed out waiting for another $SELF command on $KAFKA_DIR (lock $LOCK_FILE)"
}

do_start() {
    local pid
    if pid="$(broker_pid)"; then
        if answering; then
            log "already running (pid $pid) on $KAFKA_BOOTSTRAP"
            return 0
        fi
        log "broker (pid $pid) is running but not answering yet; waiting"
        wait_ready "$pid"
        log "Kafka $KAFKA_VERSION is up on $KAFKA_BOOTSTRAP (pid $pid)"
        return 0
    fi
    rm -f "$PID_FILE"
    local port
    for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        if port_open "$port"; then
            local who=""
            command -v ss >/dev/null 2>&1 && who="$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n 1)"
            die "port $KAFKA_HOST:$port is already in use by a process not started with KAFKA_DIR=$KAFKA_DIR${who:+ ($who)}; stop it or set KAFKA_PORT/KAFKA_CONTROLLER_PORT"
        fi
    done
    check_java
    mkdir -p "$DATA_DIR"
    write_server_properties
    write_broker_log4j
    printf '\n===== %s: starting Kafka %s on %s =====\n' "$(date '+%F %T')" "$KAFKA_VERSION" \
        "$KAFKA_BOOTSTRAP" >>"$LOG_FILE"
    format_storage_if_needed

    local -a jvm=()
    read -r -a jvm <<<"$KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS"
    jvm+=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$KAFKA_DIR"
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$CONFIG_FILE")

    rm -f "$PID_FILE"
    # New session (no controlling terminal, immune to the caller's SIGHUP/SIGINT);
    # the inner shell writes its own pid, then execs java under that pid. The lock
    # fds are closed so the broker does not hold them.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "$JAVA" "${jvm[@]}" \
        </dev/null >>"$LOG_FILE" 2>&1 8>&- 9>&- &
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s "$PID_FILE" ]] && break
        sleep 0.05
    done
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ -n "$pid" ]] || die "could not start the broker (no pid written); see $LOG_FILE"
    log "started Kafka $KAFKA_VERSION (pid $pid), waiting up to ${KAFKA_START_TIMEOUT}s for $KAFKA_BOOTSTRAP"
    local t0=$SECONDS
    wait_ready "$pid"
    log "Kafka $KAFKA_VERSION is up on $KAFKA_BOOTSTRAP (pid $pid, ready in $((SECONDS - t0))s; log: $LOG_FILE)"
}

wait_gone() {
    local pid="$1" secs="$2" deadline
    deadline=$((SECONDS + secs + 1))
    while is_our_broker "$pid"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    return 0
}

do_stop() {
    local signal="${1:-TERM}" pid
    if ! pid="$(broker_pid)"; then
        rm -f "$PID_FILE"
        log "not running (KAFKA_DIR=$KAFKA_DIR)"
        return 0
    fi
    if [[ "$signal" == KILL ]]; then
        log "killing the broker (pid $pid) with SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 30 || die "pid $pid did not exit after SIGKILL"
    else
        log "stopping the broker (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" "$KAFKA_STOP_TIMEOUT"; then
            log "pid $pid still running after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 30 || die "pid $pid did not exit after SIGKILL"
        fi
    fi
    rm -f "$PID_FILE"
    # The listening sockets go away with the process; make sure of it so an
    # immediate start does not race with them.
    local i
    for ((i = 0; i < 50; i++)); do
        port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT" || break
        sleep 0.1
    done
    log "stopped"
}

do_reset() {
    do_stop TERM
    log "deleting the data, config and log in $KAFKA_DIR"
    rm -rf "${DATA_DIR:?}" "$CONFIG_FILE" "$LOG4J_FILE" "$LOG_FILE" "$PID_FILE" \
        "$CLUSTER_ID_FILE" "$VERSION_FILE"
}

do_status() {
    local pid="" ours=""
    pid="$(broker_pid)" && ours=1
    if [[ -n "$ours" ]] && ! fetched; then
        die "a broker is running (pid $pid) but the jars to query it are not cached; run '$0 fetch'"
    fi
    if fetched && answering; then
        if [[ -n "$ours" ]]; then
            echo "running: Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP (pid $pid, KAFKA_DIR=$KAFKA_DIR)"
        else
            echo "answering on $KAFKA_BOOTSTRAP, but not started by $SELF with KAFKA_DIR=$KAFKA_DIR"
        fi
        return 0
    fi
    if [[ -n "$ours" ]]; then
        echo "not answering: broker process $pid is running but $KAFKA_BOOTSTRAP does not answer (yet)"
    else
        echo "not running (KAFKA_DIR=$KAFKA_DIR)"
    fi
    return 1
}

do_env() {
    printf 'export %s=%q\n' \
        KAFKA_BOOTSTRAP "$KAFKA_BOOTSTRAP" \
        KAFKA_BOOTSTRAP_SERVERS "$KAFKA_BOOTSTRAP" \
        KAFKA_HOST "$KAFKA_HOST" \
        KAFKA_PORT "$KAFKA_PORT" \
        KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT" \
        KAFKA_VERSION "$KAFKA_VERSION" \
        KAFKA_DIR "$KAFKA_DIR" \
        KAFKA_LOG "$LOG_FILE" \
        KAFKA_LIBS "$KAFKA_LIBS" \
        KAFKA_CLASSPATH "$KAFKA_LIBS/*"
}

has_bootstrap_arg() {
    local a
    for a in "$@"; do
        [[ "$a" == --bootstrap-server || "$a" == --bootstrap-server=* ]] && return 0
    done
    return 1
}

run_tool() {
    local class="$1" add_bootstrap="$2"
    shift 2
    ensure_fetched
    if [[ "$add_bootstrap" == yes ]] && ! has_bootstrap_arg "$@"; then
        set -- --bootstrap-server "$KAFKA_BOOTSTRAP" "$@"
    fi
    exec "$JAVA" "${TOOLS_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$TOOLS_LOG4J_FILE" \
        -cp "$KAFKA_LIBS/*" "$class" "$@"
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"
    shift
    check_settings
    need_cmd flock "util-linux"
    case "$cmd" in
        fetch)
            ensure_fetched
            log "Kafka $KAFKA_VERSION jars: $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
            ;;
        start)
            ensure_fetched
            lock_dir
            do_start
            ;;
        stop)
            lock_dir
            do_stop TERM
            ;;
        kill)
            lock_dir
            do_stop KILL
            ;;
        restart)
            ensure_fetched
            lock_dir
            do_stop TERM
            do_start
            ;;
        reset)
            lock_dir
            do_reset
            ;;
        status) do_status ;;
        env) do_env ;;
        log | logs)
            local n="${1:-100}"
            is_uint "$n" || die "usage: $SELF log [LINES]"
            [[ -f "$LOG_FILE" ]] || die "no broker log at $LOG_FILE"
            tail -n "$n" "$LOG_FILE"
            ;;
        run-class)
            [[ $# -ge 1 ]] || die "usage: $SELF run-class CLASS [ARGS...]"
            local class="$1"
            shift
            run_tool "$class" no "$@"
            ;;
        topics) run_tool org.apache.kafka.tools.TopicCommand yes "$@" ;;
        groups) run_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand yes "$@" ;;
        configs) run_tool org.apache.kafka.tools.ConfigCommand yes "$@" ;;
        produce) run_tool org.apache.kafka.tools.ConsoleProducer yes "$@" ;;
        consume) run_tool org.apache.kafka.tools.consumer.ConsoleConsumer yes "$@" ;;
        offsets) run_tool org.apache.kafka.tools.GetOffsetShell yes "$@" ;;
        transactions) run_tool org.apache.kafka.tools.TransactionsCommand yes "$@" ;;
        delete-records) run_tool org.apache.kafka.tools.DeleteRecordsCommand yes "$@" ;;
        api-versions) run_tool org.apache.kafka.tools.BrokerApiVersionsCommand yes "$@" ;;
        dump-log) run_tool org.apache.kafka.tools.DumpLogSegments no "$@" ;;
        -h | --help | help) usage 0 ;;
        *)
            log "unknown command '$cmd'"
            usage
            ;;
    esac
}

main "$@"
