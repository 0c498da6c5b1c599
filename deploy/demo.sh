#!/usr/bin/env bash
# `make demo`: three testudo-server replicas on loopback form one cluster; an agent attests
# with a join token; an entry for the current user's uid is registered; this shell, as a
# workload, fetches an X.509-SVID and a JWT-SVID from the agent's Workload API and shows
# them. Everything runs in a temporary directory and is stopped and removed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TESTUDO_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/testudo-server}"
AGENT_BIN="${TESTUDO_AGENT_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/testudo-agent}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

declare -A API_PORT
for n in 1 2 3; do
    mkdir -p "$WORK/r$n"
    API_PORT[$n]=$(free_port)
    cat > "$WORK/r$n/server.hcl" <<HCL
server {
  bind_address = "127.0.0.1"
  bind_port = ${API_PORT[$n]}
  socket_path = "$WORK/r$n/admin.sock"
  trust_domain = "example.org"
  data_dir = "$WORK/r$n/data"
  log_level = "WARN"
}
plugins {
  KeyManager "memory" {}
  NodeAttestor "join_token" {}
}
cluster {
  node_id = $n
  raft_bind_address = "127.0.0.1:$(free_port)"
}
HCL
    "$BIN" run --config "$WORK/r$n/server.hcl" 2> "$WORK/r$n/server.log" &
    PIDS+=($!)
done
for n in 1 2 3; do
    for _ in $(seq 100); do [[ -S "$WORK/r$n/admin.sock" ]] && break; sleep 0.1; done
done
sock() { echo "$WORK/r$1/admin.sock"; }

echo "== Forming a 3-replica cluster"
"$BIN" cluster init --socket-path "$(sock 1)" > /dev/null
for n in 2 3; do
    token="$("$BIN" cluster invite --socket-path "$(sock 1)" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
    "$BIN" cluster join --socket-path "$(sock $n)" --token "$token" > /dev/null
done
"$BIN" cluster status --socket-path "$(sock 3)"

echo
echo "== Waiting for the cluster's CA"
for _ in $(seq 100); do "$BIN" bundle show --socket-path "$(sock 2)" > "$WORK/bundle.pem" 2>/dev/null && break; sleep 0.2; done

echo "== Starting an agent that knows all three replicas, with a one-time join token"
token="$("$BIN" token generate --socket-path "$(sock 1)" --ttl 600 --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])')"
mkdir -p "$WORK/agent"
cat > "$WORK/agent/agent.hcl" <<HCL
agent {
  data_dir = "$WORK/agent/data"
  server_address = ["127.0.0.1:${API_PORT[1]}", "127.0.0.1:${API_PORT[2]}", "127.0.0.1:${API_PORT[3]}"]
  trust_domain = "example.org"
  trust_bundle_path = "$WORK/bundle.pem"
  socket_path = "$WORK/agent/api.sock"
  join_token = "$token"
  sync_interval = "1s"
  log_level = "WARN"
}
plugins {
  NodeAttestor "join_token" {}
  KeyManager "disk" {}
  WorkloadAttestor "unix" {}
}
HCL
"$AGENT_BIN" run --config "$WORK/agent/agent.hcl" 2> "$WORK/agent/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -S "$WORK/agent/api.sock" ]] && break; sleep 0.1; done
echo "agent attested as spiffe://example.org/spire/agent/join_token/$token"

echo
echo "== Registering a workload for uid $(id -u) (through replica 2)"
"$BIN" entry create --socket-path "$(sock 2)" --spiffe-id spiffe://example.org/demo/web \
    --parent-id "spiffe://example.org/spire/agent/join_token/$token" --selector "unix:uid:$(id -u)"

echo
echo "== Fetching the X.509-SVID through the agent's Workload API (as this shell's uid)"
for _ in $(seq 50); do
    "$AGENT_BIN" api fetch x509 --socket-path "$WORK/agent/api.sock" --write "$WORK/svid" > "$WORK/fetch.txt" 2>&1 && break
    sleep 0.2
done
cat "$WORK/fetch.txt"
openssl x509 -in "$WORK/svid/svid.0.pem" -noout -subject -issuer -dates -ext subjectAltName
echo "openssl verify against the bundle read from replica 2:"
openssl verify -CAfile "$WORK/bundle.pem" "$WORK/svid/svid.0.pem"

echo
echo "== Fetching a JWT-SVID for audience \"demo\" and showing its claims"
jwt="$("$AGENT_BIN" api fetch jwt --socket-path "$WORK/agent/api.sock" --audience demo --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["svids"][0]["svid"])')"
python3 - "$jwt" <<'PY'
import base64, json, sys
header, claims, _ = sys.argv[1].split(".")
pad = lambda s: s + "=" * (-len(s) % 4)
print("header:", json.dumps(json.loads(base64.urlsafe_b64decode(pad(header)))))
print("claims:", json.dumps(json.loads(base64.urlsafe_b64decode(pad(claims))), indent=2))
PY
"$AGENT_BIN" api validate jwt --socket-path "$WORK/agent/api.sock" --audience demo --svid "$jwt"
echo
echo "Done: 3 replicas, 1 agent, 1 workload. Stopping everything and removing $WORK."
