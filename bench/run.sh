#!/usr/bin/env bash
# Hapax benchmark harness (issue 4). See bench/README.md.
#
#   bash bench/run.sh                 full run (about 5 minutes), rewrites BENCHMARKS.md
#   bash bench/run.sh --duration 3    shorter runs per measurement (still rewrites BENCHMARKS.md)
#   bash bench/run.sh --smoke         seconds: checks the harness works end to end, asserts no speed,
#                                     installs nothing slow, never rewrites BENCHMARKS.md
# Other options: --no-build (use $HAPAX_BIN or the existing release binary), --no-nginx, --no-write,
# --no-cluster (skip the 3-node run), --no-h3 (skip the HTTP/3 run), --halt-poll NS (the guest
# kernel's halt-polling window for the run, restored after; see bench/README.md), --rounds N
# (rounds per fixed-rate cell, the duration split over them; default 5), --out FILE (write the
# report there instead of BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

smoke=0; build=1; duration=10; extra=()
args_seen="$*"
missing() { echo "$1 needs a value (e.g. $1 5)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --duration) [ $# -ge 2 ] || missing "$1"; duration="$2"; shift ;;
    --duration=*) duration="${1#*=}" ;;
    --no-build) build=0 ;;
    --no-nginx|--no-write|--no-cluster|--no-h3) extra+=("$1") ;;
    --halt-poll|--rounds|--out) [ $# -ge 2 ] || missing "$1"; extra+=("$1" "$2"); shift ;;
    --halt-poll=*|--rounds=*|--out=*) extra+=("${1%%=*}" "${1#*=}") ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

cache=${HAPAX_CACHE:-/var/cache/hapax}
mkdir -p "$cache" 2>/dev/null || cache="$HOME/.cache/hapax"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
export PATH="$HOME/.cargo/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1
say() { printf '[bench] %s\n' "$*"; }

# Many open streams: raise the descriptor limit for us and every child (mock, hapax, nginx).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- tools --------------------------------------------------------------------------------
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
apt_install() {
  say "installing $* (Debian)"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}
if [ "$smoke" -eq 0 ]; then
  need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v taskset >/dev/null || need+=(util-linux)
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}" || apt_install wrk nginx
  if ! command -v oha >/dev/null; then
    say "installing oha from crates.io (cargo install oha --locked: a few minutes, once)"
    cargo install oha --locked
  fi
fi
# --smoke installs nothing: it uses oha / wrk / nginx when present, else the Python fallback
# load generator, and skips nginx when absent.
oha_bin=$(command -v oha || true)
wrk_bin=$(command -v wrk || true)

# --- the gateway binary -------------------------------------------------------------------
if [ "$smoke" -eq 1 ]; then
  # CI has just built the debug binary: use it (a release build takes minutes).
  bin=${HAPAX_BIN:-}
  if [ -z "$bin" ]; then
    for b in "$CARGO_TARGET_DIR/release/hapax" "$CARGO_TARGET_DIR/debug/hapax"; do
      [ -x "$b" ] && { bin=$b; break; }
    done
  fi
  if [ -z "$bin" ]; then
    cargo build --bin hapax --locked
    bin="$CARGO_TARGET_DIR/debug/hapax"
  fi
else
  if [ "$build" -eq 1 ]; then
    say "cargo build --release --bin hapax"
    cargo build --release --bin hapax --locked
  fi
  bin=${HAPAX_BIN:-$CARGO_TARGET_DIR/release/hapax}
fi
[ -x "$bin" ] || { echo "no hapax binary at $bin" >&2; exit 1; }
say "hapax binary: $bin"

# --- the HTTP/3 load generator (full run only) ------------------------------------------------
# bench/h3load: its own tiny Cargo project (outside the workspace, crates pinned to the
# workspace's versions), because the installed oha has no HTTP/3. --smoke skips the HTTP/3 run.
h3load=""
if [ "$smoke" -eq 0 ]; then
  h3target=${H3LOAD_TARGET_DIR:-$cache/h3load-target}
  if [ "$build" -eq 1 ]; then
    say "cargo build --release (bench/h3load)"
    CARGO_TARGET_DIR="$h3target" cargo build --release --locked --quiet \
      --manifest-path bench/h3load/Cargo.toml || say "bench/h3load did not build: the one-core and HTTP/3 runs are skipped"
  fi
  [ -x "$h3target/release/h3load" ] && h3load="$h3target/release/h3load"
fi

# --- run ----------------------------------------------------------------------------------
py_args=(--hapax "$bin" --duration "$duration" --command "bash bench/run.sh${args_seen:+ $args_seen}")
[ -n "$oha_bin" ] && py_args+=(--oha "$oha_bin")
[ -n "$wrk_bin" ] && py_args+=(--wrk "$wrk_bin")
[ -n "$h3load" ] && py_args+=(--h3load "$h3load")
if [ "$smoke" -eq 1 ]; then
  py_args+=(--smoke --duration "${BENCH_SMOKE_DURATION:-1}")
fi
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > n * 0.5) }'; then
  py_args+=(--noisy "machine was busy at start (load average $load on $(nproc) cores): figures are noisy")
fi
# The harness itself (stream client, Python fallback loader) runs on the client core.
pin=(); [ "$(nproc)" -gt 1 ] && command -v taskset >/dev/null && pin=(taskset -c 1)
# --smoke is a CI step: never let it hang (bench.py stops what it started on SIGTERM).
guard=(); [ "$smoke" -eq 1 ] && command -v timeout >/dev/null && guard=(timeout -s TERM 110)
exec "${guard[@]}" "${pin[@]}" python3 "$root/bench/bench.py" "${py_args[@]}" "${extra[@]}"
