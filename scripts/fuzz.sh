#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a bounded time (issue #2).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60; CI passes 30)
#   FUZZ_TARGETS="event_decide rule_file" scripts/fuzz.sh 600
#
# Works on the stable toolchain: cargo-fuzz needs `-Zsanitizer` and
# sanitizer-coverage flags, which RUSTC_BOOTSTRAP=1 unlocks on stable, and
# stable ships the AddressSanitizer runtime (librustc-stable_rt.asan.a); where
# a toolchain lacks it the targets run without a sanitizer (FUZZ_SANITIZER
# overrides). Installs a pinned cargo-fuzz from crates.io if missing.
#
# Inputs: the checked-in seeds (fuzz/seeds/<target>) and the growing local
# corpus (fuzz/corpus/<target>, git-ignored). Builds go to fuzz/target. Exits
# 1 if any target crashes, hangs or runs out of memory, naming the input
# under fuzz/artifacts/<target>/ and how to reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2
TARGETS="${FUZZ_TARGETS:-event_decide rule_file eval_stream}"
# A single input taking longer than this is reported as a hang.
PER_INPUT_TIMEOUT="${FUZZ_INPUT_TIMEOUT:-10}"

if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi

now() { date +%s; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "--- installing cargo-fuzz $CARGO_FUZZ_VERSION"
  started=$(now)
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
  echo "cargo-fuzz installed in $(($(now) - started)) s"
fi
echo "--- $(cargo fuzz --version), $(rustc --version)"

export RUSTC_BOOTSTRAP=1
sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
if [ -z "${FUZZ_SANITIZER:-}" ]; then
  if compgen -G "$sysroot/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
    FUZZ_SANITIZER=address
  else
    FUZZ_SANITIZER=none
  fi
fi
# Debug assertions make integer overflow and `debug_assert!` failures crash.
fuzz_flags=(--sanitizer "$FUZZ_SANITIZER" --debug-assertions)
echo "--- sanitizer: $FUZZ_SANITIZER; $SECONDS_PER_TARGET s per target: $TARGETS"

started=$(now)
cargo fuzz build "${fuzz_flags[@]}"
echo "targets built in $(($(now) - started)) s"

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
summary=()
for target in $TARGETS; do
  corpus="fuzz/corpus/$target"
  artifacts="fuzz/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  log="$logs/$target.log"
  before=$(find "$artifacts" -type f | sort)
  echo "--- fuzzing $target for $SECONDS_PER_TARGET s (log: $log)"
  status=0
  # The outer timeout only guards against a wedged run.
  timeout --kill-after=30 $((SECONDS_PER_TARGET + 300)) \
    cargo fuzz run "${fuzz_flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" \
      -timeout="$PER_INPUT_TIMEOUT" \
      -print_final_stats=1 \
      >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  units=$(find "$corpus" -type f | wc -l)
  line="$target: ${execs:-?} runs, ${rate:-?} exec/s, corpus $units"
  new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | grep . || true)
  if [ "$status" -ne 0 ] || [ -n "$new" ]; then
    failed+=("$target")
    line="$line: FAILED (exit $status)"
    echo "!!! $target failed; from its log ($log):"
    # The panic and its message, or the sanitizer's or libFuzzer's verdict.
    excerpt=$(grep -E -A3 'panicked at|^==[0-9]+== ?ERROR|^SUMMARY:' "$log" |
      grep -v -E '^\s+#?[0-9]+:? ' | head -30 || true)
    if [ -n "$excerpt" ]; then echo "$excerpt"; else tail -30 "$log"; fi
    for input in $new; do
      echo "!!! failing input: $input"
      echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${fuzz_flags[*]} $target $input"
    done
  fi
  echo "$line"
  summary+=("$line")
done

echo "--- summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]}" >&2
  exit 1
fi
