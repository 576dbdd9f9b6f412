#!/usr/bin/env bash
# Builds the images docker-compose.offline.yml names, without any container registry:
#   hapax-base:bookworm          debootstrap --variant=minbase bookworm, `docker import`ed
#   hapax-offline/hapax:ci       the host-built release binary (Debian 12 host = same glibc)
#   hapax-offline/haproxy:ci     Debian's haproxy       } apt-get inside the build, from the
#   hapax-offline/redis:ci       Debian's redis-server  } same Debian mirror the host uses
#   hapax-offline/prometheus:ci  Debian's prometheus    }
# Each image carries a `hapax.inputs` label (hash of what it is made of) and is rebuilt only
# when that hash changes, so a warm run costs a cargo no-op build and a few `docker inspect`s.
set -euo pipefail
cd "$(dirname "$0")"
offline=$(pwd)
root=$(cd ../.. && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/hapax/target}
export DOCKER_BUILDKIT=0          # the classic builder never looks at a registry for local FROMs

log() { printf '[offline-images] %s\n' "$*"; }
sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

label_of() { docker image inspect -f '{{index .Config.Labels "hapax.inputs"}}' "$1" 2>/dev/null || true; }
hash_of() { sha256sum | cut -c1-32; }

# --- the Debian mirror apt uses on this host (the one we know is reachable) ----------------
# Prints "URI" for the first source entry whose suites include $1 (deb822 or one-line form).
host_mirror() {
  local suite=$1 f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    case "$f" in
      *.sources)
        awk -v suite="$suite" '
          /^[[:space:]]*$/ { if (uri != "" && hit) { print uri; exit } uri=""; hit=0; next }
          /^URIs:/   { uri=$2 }
          /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit=1 }
          END { if (uri != "" && hit) print uri }' "$f" ;;
      *)
        awk -v suite="$suite" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i+1) == suite) { print $i; exit } break } }' "$f" ;;
    esac
  done | head -n1
}
mirror=$(host_mirror bookworm); mirror=${mirror:-http://deb.debian.org/debian}
security=$(host_mirror bookworm-security); security=${security:-http://deb.debian.org/debian-security}

# --- base: debootstrap + docker import ------------------------------------------------------
base=hapax-base:bookworm
base_key=$(printf 'v1 minbase bookworm %s %s\n' "$mirror" "$security" | hash_of)
if [ "$(label_of "$base")" = "$base_key" ]; then
  log "$base is up to date"
else
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq debootstrap >/dev/null
  }
  work=$(mktemp -d /tmp/hapax-base.XXXXXX)
  trap '$sudo_cmd rm -rf "$work"' EXIT
  log "debootstrap bookworm from $mirror"
  if ! $sudo_cmd debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log"; exit 1
  fi
  $sudo_cmd sh -c "
    set -e
    cd '$work/rootfs'
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' '$mirror' '$mirror' '$security' > etc/apt/sources.list
    printf 'APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n' > etc/apt/apt.conf.d/90hapax-minimal
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n' > etc/dpkg/dpkg.cfg.d/90hapax-nodoc
    printf '#!/bin/sh\nexit 101\n' > usr/sbin/policy-rc.d && chmod 755 usr/sbin/policy-rc.d
    rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* tmp/* usr/share/doc/* usr/share/man/*
    mkdir -p var/lib/apt/lists/partial
  "
  log "importing $base"
  $sudo_cmd tar -C "$work/rootfs" -c . | docker import \
    --change "LABEL hapax.inputs=$base_key" --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$base" >/dev/null
  $sudo_cmd rm -rf "$work"; trap - EXIT
fi

build() { # build IMAGE DOCKERFILE KEY [context]
  local image=$1 dockerfile=$2 key=$3 context=${4:-} out
  if [ "$(label_of "$image")" = "$key" ]; then log "$image is up to date"; return; fi
  log "building $image"
  local previous; previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  out=$(mktemp /tmp/hapax-build.XXXXXX)
  local status=0
  if [ -n "$context" ]; then
    docker build -q --label "hapax.inputs=$key" -t "$image" -f "$dockerfile" "$context" >"$out" 2>&1 || status=$?
  else
    # no build context: nothing is copied in
    docker build -q --label "hapax.inputs=$key" -t "$image" - <"$dockerfile" >"$out" 2>&1 || status=$?
  fi
  if [ "$status" -ne 0 ]; then log "building $image failed:"; tail -n 40 "$out"; rm -f "$out"; return 1; fi
  rm -f "$out"
  # the image this one replaces, unless something still uses it
  [ -z "$previous" ] || docker rmi "$previous" >/dev/null 2>&1 || true
}

# --- the apt-based images, in parallel (mostly network-bound) ------------------------------
pids=()
for name in haproxy redis prometheus; do
  key=$( (cat "Dockerfile.$name"; echo "$base_key") | hash_of)
  build "hapax-offline/$name:ci" "Dockerfile.$name" "$key" & pids+=($!)
done

# --- hapax: the host-built binary ------------------------------------------------------------
log "cargo build --release --bin hapax"
(cd "$root" && cargo build --release --locked --bin hapax --quiet)
binary="$CARGO_TARGET_DIR/release/hapax"
if ! ldd "$binary" | awk '/=>/ && $3 !~ /^\/(usr\/)?lib/ { bad=1 } END { exit bad }'; then
  log "$binary links libraries outside the system dirs:"; ldd "$binary"; exit 1
fi
key=$( (cat Dockerfile.hapax; echo "$base_key"; sha256sum <"$binary") | hash_of)
if [ "$(label_of hapax-offline/hapax:ci)" != "$key" ]; then
  install -m 755 "$binary" context/hapax
  strip context/hapax
fi
status=0
build hapax-offline/hapax:ci Dockerfile.hapax "$key" "$offline" || status=1
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" -eq 0 ] || exit 1
rm -f context/hapax
docker run --rm hapax-offline/hapax:ci --version >/dev/null || { log "the hapax image does not run"; exit 1; }
log "images ready"
