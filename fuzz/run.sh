#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]`.
# CI runs it with the default (15 s each). Needs cargo-fuzz, installed once into ~/.cargo/bin
# (skipped with a message if it cannot be installed); on a stable toolchain cargo-fuzz's
# nightly flags are allowed through RUSTC_BOOTSTRAP=1. The fuzz build has its own target dir
# so it never invalidates the main build cache. New corpus entries are kept in the cache, the
# committed seeds in fuzz/corpus/<target>/ are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(chat_request completion_request config_load anthropic_stream ollama_stream redact upstream_answer client_request answer_shape)
fi
cache=${HAPAX_CACHE:-/var/cache/hapax}
mkdir -p "$cache" 2>/dev/null || cache="$HOME/.cache/hapax"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz not found: installing it into ~/.cargo/bin (once)"
  if ! env -u CARGO_TARGET_DIR timeout "${HAPAX_FUZZ_INSTALL_TIMEOUT:-900}" \
      cargo install cargo-fuzz --locked --quiet; then
    echo "SKIP fuzzing: cargo-fuzz is not installed and could not be installed"
    exit 0
  fi
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$cache/fuzz-target"
# No sanitizer: the code under test is safe Rust; panics (including overflow checks, which
# cargo-fuzz turns on) are what we look for, and the build stays half as long.
if ! cargo fuzz build --sanitizer none >"$cache/fuzz-build.log" 2>&1; then
  tail -n 30 "$cache/fuzz-build.log"
  echo "fuzz build failed"
  exit 1
fi

failed=()
for target in "${targets[@]}"; do
  work="$cache/fuzz-corpus/$target"
  mkdir -p "$work"
  if [ "$(find "$work" -type f | wc -l)" -gt 20000 ]; then
    cargo fuzz cmin --sanitizer none "$target" "$work" >/dev/null 2>&1 || true
  fi
  log="$cache/fuzz-$target.log"
  if cargo fuzz run --sanitizer none "$target" "$work" "fuzz/corpus/$target" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz $target: ok, $runs runs in ${secs}s"
  else
    echo "fuzz $target: FAILED (log: $log)"
    grep -E 'panicked|SUMMARY|Test unit written' -A3 "$log" | head -20 || true
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
  exit 1
fi
