#!/usr/bin/env bash
# `make demo`: three testudo-server replicas on loopback form one cluster, an entry is
# registered, and an X.509-SVID for the workload is minted on one replica and checked with
# openssl against the bundle read from another. The agent (and the Workload API it serves)
# is not built yet, so the SVID is minted through the admin API for a key made here.
# Everything runs in a temporary directory and is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TESTUDO_SERVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/testudo-server}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

for n in 1 2 3; do
    mkdir -p "$WORK/r$n"
    cat > "$WORK/r$n/server.hcl" <<HCL
server {
  bind_address = "127.0.0.1"
  bind_port = $(free_port)
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

echo "== Registering the workload (through replica 2)"
"$BIN" entry create --socket-path "$(sock 2)" --spiffe-id spiffe://example.org/demo/web \
    --parent-id spiffe://example.org/spire/agent/join_token/demo --selector unix:uid:1000

echo "== Minting its X.509-SVID on replica 3"
"$BIN" x509 mint --socket-path "$(sock 3)" --spiffe-id spiffe://example.org/demo/web --write "$WORK/svid" > /dev/null
openssl x509 -in "$WORK/svid/svid.pem" -noout -subject -issuer -dates -ext subjectAltName
echo
cat "$WORK/svid/svid.pem"
echo "== openssl verify against the bundle read from replica 2"
openssl verify -CAfile "$WORK/bundle.pem" "$WORK/svid/svid.pem"
echo
echo "(The agent and the Workload API are not built yet; this SVID was minted through the admin API.)"
