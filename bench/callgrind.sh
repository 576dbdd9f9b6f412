#!/usr/bin/env bash
# Instructions per request on the gateway's hot path, counted by callgrind: a figure that
# does not depend on machine noise, for before/after comparisons of optimisations.
#   bash bench/callgrind.sh [BIN]   (default: the release binary)
#   BODY=file.json bash bench/callgrind.sh   (another request body; default: one short message)
#   KEEP=dir bash bench/callgrind.sh   (keeps the callgrind outputs for callgrind_annotate)
#   DEDUP=on bash bench/callgrind.sh   (deduplication's path, the default config's: no
#     `X-Hapax-Dedup: off`, one request at a time so that no two identical ones share a call;
#     compare with C=1, the same load with the opt-out)
#   BUSY_POLL=200us bash bench/callgrind.sh   (busy polling on, as by default; off here unless
#     asked: how long it spins depends on timing, so the count would move from run to run)
#   MOCK_LATENCY_MS=20 C=40 bash bench/callgrind.sh   (the mock answers after 20 ms, so that
#     C requests are in flight at once, as at 2000 req/s against a 20 ms upstream)
#   PROTO=h3 bash bench/callgrind.sh   (the same requests over HTTP/3, from bench/h3load at
#     200 requests a second on 4 QUIC connections for N/200 seconds, so that acknowledgements
#     and timers count as they would at a low rate; H3LOAD=path if not built at the default;
#     DEDUP and C do not apply)
# Runs the gateway under callgrind twice (N1 and N2 requests, realistic config: auth, rate
# limits, metrics, JSON logs at info) and reports (I(N2) - I(N1)) / (N2 - N1).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-/var/cache/hapax/target}/release/hapax}
n1=${N1:-500}; n2=${N2:-2500}
body='{"model":"mock-1","messages":[{"role":"user","content":"hello there, how are you"}]}'
[ -n "${BODY:-}" ] && body=$(cat "$BODY")
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 1; }
proto=${PROTO:-h1}
h3load=${H3LOAD:-/var/cache/hapax/h3load-target/release/h3load}
if [ "$proto" = h3 ]; then
  [ -x "$h3load" ] || { echo "h3load is needed: build bench/h3load (bench/README.md) or set H3LOAD"; exit 1; }
else
  command -v oha >/dev/null || { echo "oha is needed (cargo install oha --locked)"; exit 1; }
fi

"$bin" mock-provider --listen 127.0.0.1:0 > "$work/mock.out" 2>/dev/null &
for _ in $(seq 50); do grep -q 'http=' "$work/mock.out" 2>/dev/null && break; sleep 0.1; done
mock=$(grep -o 'http=[^ ]*' "$work/mock.out" | cut -d= -f2)
if [ -n "${MOCK_LATENCY_MS:-}" ]; then
  python3 -c 'import json, sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method="POST",
    data=json.dumps({"route": "/v1/chat/completions", "latency_ms": int(sys.argv[2])}).encode(),
    headers={"content-type": "application/json"}), timeout=5)' "http://$mock/_mock/faults" "$MOCK_LATENCY_MS"
fi
http3=""
if [ "$proto" = h3 ]; then
  "$bin" gen-cert --out "$work/certs" > /dev/null
  http3=", http3: {enabled: true, port: 0, tls_cert_file: \"$work/certs/cert.pem\", tls_key_file: \"$work/certs/key.pem\"}"
fi
cat > "$work/gw.yaml" <<YAML
server: {host: 127.0.0.1, port: 0, busy_poll: ${BUSY_POLL:-0s}$http3}
logging: {level: info}
providers:
  primary: {type: openai_compatible, base_url: "http://$mock/v1", model: mock-1}
auth:
  api_keys: [{name: bench, key: bench-key-123, rate_limit: {requests_per_minute: 100000000}}]
rate_limits: {global: {requests_per_minute: 100000000}}
YAML

instructions() {
  local n=$1 out="$work/cg.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" serve --config "$work/gw.yaml" > "$work/gw.out" 2>"$work/gw.err" &
  local pid=$!
  for _ in $(seq 300); do grep -q 'http=' "$work/gw.out" 2>/dev/null && break; sleep 0.1; done
  local gw; gw=$(grep -o 'http=[^ ]*' "$work/gw.out" | cut -d= -f2)
  # Runs in a command substitution: a failure stops the gateway itself and says why on stderr.
  failed() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; echo "load failed:" >&2; cat "$1" >&2; exit 1; }
  local served=$n
  if [ "$proto" = h3 ]; then
    local h3; h3=$(grep -o 'h3=[^ ]*' "$work/gw.out" | cut -d= -f2)
    "$h3load" --proto h3 --url "https://$h3/v1/chat/completions" --cacert "$work/certs/cert.pem" \
      --connections 4 --concurrency 16 --rate 200 --duration "$(awk -v n="$n" 'BEGIN { print n / 200 }')" \
      -H 'authorization: Bearer bench-key-123' -H 'x-hapax-dedup: off' --body "$body" \
      > "$work/load.$n" 2>&1 || failed "$work/load.$n"
    # every request answered, or the count would be of something else
    served=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); assert j["errors"] == 0; print(j["requests"])' \
      "$work/load.$n" 2>/dev/null) || failed "$work/load.$n"
  else
    local opt_out=(-c "${C:-4}" -H 'x-hapax-dedup: off')
    [ "${DEDUP:-off}" = on ] && opt_out=(-c 1)
    oha -n "$n" "${opt_out[@]}" --no-tui -m POST -H 'Authorization: Bearer bench-key-123' \
      -H 'content-type: application/json' -d "$body" \
      "http://$gw/v1/chat/completions" > "$work/oha.$n" 2>&1
    grep -q '\[200\] '"$n"' responses' "$work/oha.$n" || failed "$work/oha.$n"
  fi
  kill -INT "$pid"; wait "$pid" || true
  echo "$served $(grep -m1 '^summary:' "$out" | awk '{print $2}')"
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$out" "$KEEP/"; fi
}
first=$(instructions "$n1"); second=$(instructions "$n2")
read -r s1 i1 <<< "$first"; read -r s2 i2 <<< "$second"
echo "instructions: ${s1} requests: $i1, ${s2} requests: $i2"
[ "$s2" -gt "$s1" ] || { echo "the second run served no more requests than the first ($s1, $s2): raise N2"; exit 1; }
echo "instructions per request: $(( (i2 - i1) / (s2 - s1) ))"
