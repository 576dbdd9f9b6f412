#!/usr/bin/env bash
# Container end-to-end test of the docker-compose cluster, built and run without a registry:
# builds the offline images (deploy/offline/build.sh, cached), starts docker-compose.yml with
# docker-compose.offline.yml as project `hapax-e2e`, and drives it from the host: through the
# load balancer's port published on 127.0.0.1, and the nodes on the project's own network.
# Checks that depend on work in progress (Raft leader, cluster-wide breaker) print SKIP when
# the feature is not there yet. Always tears down with `down -v`. Last line: "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/hapax/target}
started_at=$SECONDS

project=${HAPAX_E2E_PROJECT:-hapax-e2e}
if command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  compose=(docker compose)
fi
compose+=(-f "$root/docker-compose.yml" -f "$root/docker-compose.offline.yml" -p "$project")
network="${project}_default"

passed=0; failed=0; skipped=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s%s\n' "$1" "${2:+: $2}"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP  %s%s\n' "$1" "${2:+: $2}"; }
note() { printf '      %s\n' "$*"; }
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started_at)); }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

torn_down=0
teardown() {
  [ "$torn_down" -eq 1 ] && return 0
  torn_down=1
  if [ "$failed" -gt 0 ] || [ "${1:-}" = "error" ]; then
    printf '\n== logs of the failing run (last 25 lines per service)\n'
    "${compose[@]}" logs --no-color --tail=25 2>&1 | sed 's/^/      /' || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}
tmp=$(mktemp -d /tmp/hapax-e2e.XXXXXX)
on_exit() {
  local status=$?
  rm -rf "$tmp"
  if [ "$torn_down" -eq 0 ]; then
    [ "$status" -ne 0 ] && printf '\ne2e aborted (exit %d)\n' "$status"
    teardown error
    [ "$status" -ne 0 ] && printf '%d passed, %d failed\n' "$passed" $((failed + 1))
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
step "offline images"
bash "$root/deploy/offline/build.sh"

step "docker-compose up (project $project)"
export HAPAX_BIND=127.0.0.1
export HAPAX_PORT=${HAPAX_E2E_PORT:-$(free_port)}
export PROMETHEUS_PORT=${HAPAX_E2E_PROMETHEUS_PORT:-$(free_port)}
export HAPAX_CONFIG=hapax.yaml
unset OPENAI_API_KEY ANTHROPIC_API_KEY || true      # the test uses the mock provider only
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of a killed run
"${compose[@]}" up -d --no-build 2>&1 | sed 's/^/      /'
lb="http://127.0.0.1:$HAPAX_PORT"
prom="http://127.0.0.1:$PROMETHEUS_PORT"
note "load balancer $lb, prometheus $prom"

cid() { "${compose[@]}" ps -q "$1"; }
ip_of() { docker inspect -f "{{with index .NetworkSettings.Networks \"$network\"}}{{.IPAddress}}{{end}}" "$(cid "$1")"; }
node() { printf 'http://%s:8080' "$(ip_of "$1")"; }
nodes=(hapax1 hapax2 hapax3)

# curl with bounded time; never fails the script by itself.
get() { curl -s --max-time "${TIMEOUT:-5}" "$@" || true; }
chat_body='{"model":"mock-1","messages":[{"role":"user","content":"Hello from the e2e test"}]}'
chat() { # chat URL -> HTTP status
  curl -s -o /dev/null -w '%{http_code}' --max-time 15 -H 'Content-Type: application/json' \
    -d "$chat_body" "$1/v1/chat/completions" || echo 000
}
# wait_for SECONDS COMMAND...: retries until the command succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 1
  done
}
liveness() { # liveness OBSERVER MEMBER -> alive | dead | left | absent | unreachable
  local body
  body=$(TIMEOUT=3 get "$(node "$1")/v1/health")
  [ -n "$body" ] || { echo unreachable; return; }
  jq -r --arg m "$2" '[.cluster.members[]? | select(.node_id == $m) | .liveness][0] // "absent"' <<<"$body" 2>/dev/null || echo unreachable
}
sees_all_alive() { # sees_all_alive OBSERVER...: each observer lists every node alive
  local o m
  for o in "$@"; do for m in "${nodes[@]}"; do
    [ "$(liveness "$o" "$m")" = alive ] || return 1
  done; done
}
# A background loop of N chat requests through the load balancer, one status per line.
traffic_start() { # traffic_start FILE N
  ( for _ in $(seq "$2"); do chat "$lb" >>"$1"; echo >>"$1"; sleep 0.1; done ) &
  traffic_pid=$!
}
traffic_check() { # traffic_check NAME FILE N
  wait "$traffic_pid" || true
  local total ok
  total=$(grep -c . "$2" || true); ok=$(grep -c '^200$' "$2" || true)
  if [ "$total" -eq "$3" ] && [ "$ok" -eq "$3" ]; then
    pass "$1 ($ok/$3 requests answered 200)"
  else
    fail "$1" "$ok of $3 requests answered 200 (statuses: $(sort "$2" | uniq -c | tr -s ' \n' ' '))"
  fi
}

# ---------------------------------------------------------------------------------------------
step "requests through the load balancer"
lb_up() { [ "$(chat "$lb")" = 200 ]; }
if wait_for 90 lb_up; then pass "cluster answers through the load balancer"; else fail "cluster answers through the load balancer" "no 200 within 90s"; fi

body=$(get --max-time 15 -H 'Content-Type: application/json' -d "$chat_body" "$lb/v1/chat/completions")
content=$(jq -r '.choices[0].message.content // empty' <<<"$body" 2>/dev/null || true)
if [ -n "$content" ]; then pass "chat completion via LB"; else fail "chat completion via LB" "body: ${body:0:200}"; fi

stream=$(get -N --max-time 15 -H 'Content-Type: application/json' \
  -d '{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"words:12"}]}' \
  "$lb/v1/chat/completions")
chunks=$(grep -c '^data: {' <<<"$stream" || true)
if grep -q '^data: \[DONE\]' <<<"$stream" && [ "$chunks" -ge 2 ] && ! grep -q '"error"' <<<"$stream"; then
  pass "streamed chat completion via LB ($chunks chunks, [DONE])"
else
  fail "streamed chat completion via LB" "${stream:0:300}"
fi

# HAProxy's own view (stats CSV on the compose network): status, retries, redispatches.
lb_stats() { get "http://$(ip_of lb):8404/stats;csv" | awk -F, '$1 == "hapax_nodes" && $2 ~ /^hapax[0-9]$/ { print $2, $18, "retries=" $16, "redispatches=" $17 }'; }
lb_all_up() { [ "$(lb_stats | awk '$2 == "UP"' | wc -l)" -eq 3 ]; }
if wait_for 30 lb_all_up; then pass "LB health checks see hapax1..3 UP"; else fail "LB health checks see hapax1..3 UP" "$(lb_stats | tr '\n' ';')"; fi

# Round robin: every node serves some of 12 requests (their request counters move).
served_by() { get "$(node "$1")/metrics" | awk '/^hapax_http_requests_total\{.*chat\/completions.*status="200"/ { s += $2 } END { print s + 0 }'; }
declare -A before
for n in "${nodes[@]}"; do before[$n]=$(served_by "$n"); done
for _ in $(seq 12); do chat "$lb" >/dev/null; done
spread=""; idle=0
for n in "${nodes[@]}"; do d=$(( $(served_by "$n") - before[$n] )); spread+="$n=$d "; [ "$d" -gt 0 ] || idle=1; done
if [ "$idle" -eq 0 ]; then pass "LB spreads requests over the three nodes ($spread)"; else fail "LB spreads requests over the three nodes" "$spread"; fi

# ---------------------------------------------------------------------------------------------
step "cluster membership and Raft"
if wait_for 60 sees_all_alive "${nodes[@]}"; then
  pass "every node lists hapax1..3 alive in /v1/health"
else
  fail "every node lists hapax1..3 alive" "$(for o in "${nodes[@]}"; do printf '%s sees ' "$o"; for m in "${nodes[@]}"; do printf '%s=%s ' "$m" "$(liveness "$o" "$m")"; done; done)"
fi

leader_of() { get "$(node "$1")/v1/health" | jq -r 'if (.cluster.raft.status | type) == "object" and (.cluster.raft.status | has("leader_id")) then (.cluster.raft.status.leader_id // "none" | tostring) else "ABSENT" end' 2>/dev/null || echo unreachable; }
leaders() { local n; for n in "$@"; do printf '%s ' "$(leader_of "$n")"; done; }
one_leader() { # one_leader NODE...: all report the same non-empty leader
  local l first=""; for l in $(leaders "$@"); do
    case "$l" in ABSENT|none|null|unreachable|"") return 1 ;; esac
    [ -z "$first" ] && first=$l; [ "$l" = "$first" ] || return 1
  done
}
raft_check() { # raft_check NAME NODE...
  local name=$1; shift
  if [[ " $(leaders "$@") " == *" ABSENT "* ]]; then
    fail "$name" "/v1/health has no cluster.raft.status.leader_id"
  elif wait_for 60 one_leader "$@"; then
    pass "$name (leader $(leader_of "$1"))"
  else
    fail "$name" "leader_id per node: $(leaders "$@")"
  fi
}
raft_check "one Raft leader, the same on every node" "${nodes[@]}"
voters_of() { get "$(node "$1")/v1/health" | jq -r '.cluster.raft.status.voters // "ABSENT" | if type == "array" then sort | join(",") else . end' 2>/dev/null || echo unreachable; }
three_voters() { local n; for n in "${nodes[@]}"; do [ "$(voters_of "$n")" = hapax1,hapax2,hapax3 ] || return 1; done; }
if [ "$(voters_of hapax1)" = ABSENT ]; then
  fail "Raft group has hapax1..3 as voters" "/v1/health has no cluster.raft.status.voters"
elif wait_for 60 three_voters; then
  pass "Raft group has hapax1..3 as voters on every node"
else
  fail "Raft group has hapax1..3 as voters" "$(for n in "${nodes[@]}"; do printf '%s: %s; ' "$n" "$(voters_of "$n")"; done)"
fi

data_ok=1; data_desc=""
for n in "${nodes[@]}"; do
  files=$(docker exec "$(cid "$n")" sh -c 'ls -A /var/lib/hapax/raft 2>/dev/null | wc -l' 2>/dev/null || echo 0)
  data_desc+="$n=$files "; [ "$files" -gt 0 ] || data_ok=0
done
if [ "$data_ok" -eq 1 ]; then
  pass "each node keeps Raft data in its own volume (/var/lib/hapax/raft entries: $data_desc)"
else
  fail "each node keeps Raft data in its own volume" "data_dir empty on some node ($data_desc)"
fi

prom_up() { # all three hapax targets report up == 1
  local body
  body=$(get "$prom/api/v1/query" --data-urlencode 'query=up{job="hapax"}')
  [ "$(jq -r '[.data.result[]? | select(.value[1] == "1")] | length' <<<"$body" 2>/dev/null)" = 3 ]
}
if wait_for 60 prom_up; then
  pass "Prometheus scrapes all three nodes (up{job=\"hapax\"} == 1 x3)"
else
  fail "Prometheus scrapes all three nodes" "$(get "$prom/api/v1/query" --data-urlencode 'query=up' | head -c 400)"
fi

# ---------------------------------------------------------------------------------------------
step "stop one node under load"
traffic_start "$tmp/stop.txt" 100
sleep 2
"${compose[@]}" stop hapax2 2>&1 | sed 's/^/      /'
traffic_check "no failed request while hapax2 stops" "$tmp/stop.txt" 100
note "haproxy: $(lb_stats | tr '\n' ';')"
hapax2_gone() { local s; for o in hapax1 hapax3; do s=$(liveness "$o" hapax2); [ "$s" = dead ] || [ "$s" = left ] || [ "$s" = absent ] || return 1; done; }
if wait_for 30 hapax2_gone; then
  pass "hapax1 and hapax3 no longer list hapax2 alive ($(liveness hapax1 hapax2))"
else
  fail "hapax1 and hapax3 no longer list hapax2 alive" "hapax1 sees $(liveness hapax1 hapax2), hapax3 sees $(liveness hapax3 hapax2)"
fi

step "restart it"
"${compose[@]}" start hapax2 2>&1 | sed 's/^/      /'
if wait_for 60 sees_all_alive "${nodes[@]}"; then
  pass "hapax2 rejoins: all three alive on every node"
else
  fail "hapax2 rejoins" "hapax1 sees hapax2 $(liveness hapax1 hapax2), hapax2 sees hapax1 $(liveness hapax2 hapax1)"
fi
raft_check "one Raft leader after the restart" "${nodes[@]}"
if wait_for 30 lb_all_up; then pass "LB takes hapax2 back"; else fail "LB takes hapax2 back" "$(lb_stats | tr '\n' ';')"; fi

# ---------------------------------------------------------------------------------------------
step "partition one node (docker network disconnect)"
hapax2_ip=$(ip_of hapax2); hapax2_cid=$(cid hapax2)
traffic_start "$tmp/partition.txt" 60
sleep 1
docker network disconnect "$network" "$hapax2_cid"
traffic_check "no failed request while hapax2 is cut off" "$tmp/partition.txt" 60
note "haproxy: $(lb_stats | tr '\n' ';')"
hapax2_dead() { [ "$(liveness hapax1 hapax2)" = dead ] && [ "$(liveness hapax3 hapax2)" = dead ]; }
if wait_for 60 hapax2_dead; then
  pass "hapax1 and hapax3 see the cut-off hapax2 dead"
else
  fail "hapax1 and hapax3 see hapax2 dead" "hapax1: $(liveness hapax1 hapax2), hapax3: $(liveness hapax3 hapax2)"
fi
direct_ok=1
for n in hapax1 hapax3; do [ "$(chat "$(node "$n")")" = 200 ] || direct_ok=0; done
if [ "$direct_ok" -eq 1 ]; then pass "hapax1 and hapax3 keep serving"; else fail "hapax1 and hapax3 keep serving"; fi
raft_check "the majority side agrees on a leader" hapax1 hapax3

# Reconnect with its service name (and, when free, its old address) so docker's DNS finds it.
docker network connect --alias hapax2 --ip "$hapax2_ip" "$network" "$hapax2_cid" 2>/dev/null \
  || docker network connect --alias hapax2 "$network" "$hapax2_cid"
note "hapax2 back at $(ip_of hapax2) (was $hapax2_ip)"
if wait_for 90 sees_all_alive "${nodes[@]}"; then
  pass "hapax2 rejoins after the partition: all three alive on every node"
else
  fail "hapax2 rejoins after the partition" "$(for o in "${nodes[@]}"; do printf '%s sees hapax2=%s; ' "$o" "$(liveness "$o" hapax2)"; done)"
fi
raft_check "one Raft leader on every node after the partition" "${nodes[@]}"
applied_of() { get "$(node "$1")/v1/health" | jq -r '.cluster.raft.last_applied_index // "ABSENT" | tostring' 2>/dev/null || echo unreachable; }
target=$(applied_of hapax1)
caught_up() { local a; a=$(applied_of hapax2); [[ "$a" =~ ^[0-9]+$ ]] && [ "$a" -ge "$target" ]; }
if ! [[ "$target" =~ ^[0-9]+$ ]]; then
  fail "hapax2 catches up with the Raft log" "/v1/health has no cluster.raft.last_applied_index ($target)"
elif wait_for 60 caught_up; then
  pass "hapax2 catches up with the Raft log (applied $(applied_of hapax2) >= $target)"
else
  fail "hapax2 catches up with the Raft log" "hapax2 applied $(applied_of hapax2), hapax1 $target"
fi
if wait_for 30 lb_all_up && [ "$(chat "$lb")" = 200 ]; then
  pass "LB has all three nodes UP and serves after the partition heals"
else
  fail "LB serves all three nodes after the partition heals" "$(lb_stats | tr '\n' ';')"
fi

# ---------------------------------------------------------------------------------------------
step "a provider outage seen by one node trips the breaker everywhere"
mock="http://$(ip_of mock-provider):9000"
breaker_of() { get "$(node "$1")/metrics" | awk '/^circuit_breaker_state\{[^}]*provider="mock"/ { print $2; found=1 } END { if (!found) print "?" }' | head -n1; }
breakers() { local n; for n in "${nodes[@]}"; do printf '%s=%s ' "$n" "$(breaker_of "$n")"; done; }
curl -s -o /dev/null --max-time 5 -X POST -H 'Content-Type: application/json' \
  -d '{"route":"/v1/chat/completions","status":500}' "$mock/_mock/faults"
hapax1=$(node hapax1)
for _ in $(seq 6); do chat "$hapax1" >/dev/null; [ "$(breaker_of hapax1)" = 2 ] && break; done
if [ "$(breaker_of hapax1)" = 2 ]; then
  pass "hapax1's breaker for the failing provider opens"
  all_open() { [ "$(breaker_of hapax1)" = 2 ] && [ "$(breaker_of hapax2)" = 2 ] && [ "$(breaker_of hapax3)" = 2 ]; }
  if wait_for 15 all_open; then
    pass "the breaker is open on all three nodes ($(breakers))"
  else
    fail "breaker open on all three nodes" "only hapax1 tripped after 15s ($(breakers))"
  fi
else
  fail "hapax1's breaker for the failing provider opens" "$(breakers)"
fi
curl -s -o /dev/null --max-time 5 -X DELETE "$mock/_mock/faults"

# ---------------------------------------------------------------------------------------------
step "teardown (down -v)"
if [ "$failed" -gt 0 ]; then
  printf 'logs (last 25 lines per service):\n'
  "${compose[@]}" logs --no-color --tail=25 2>&1 | sed 's/^/      /' || true
fi
"${compose[@]}" down -v --remove-orphans 2>&1 | sed 's/^/      /'
torn_down=1
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; docker volume ls -q --filter "label=com.docker.compose.project=$project"; docker network ls -q --filter "label=com.docker.compose.project=$project")
if [ -z "$left" ]; then pass "down -v removes containers, volumes and network"; else fail "down -v leaves things behind" "$left"; fi

printf '\ne2e took %ds, %d skipped\n' $((SECONDS - started_at)) "$skipped"
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
