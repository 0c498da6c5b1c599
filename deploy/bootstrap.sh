#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Testudo.
# Idempotent: every step checks before it acts, so running it twice is cheap.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TESTUDO_VENV:-$ROOT/.venv}"

# System packages: libclang for RocksDB's bindgen, a C++ toolchain for RocksDB,
# openssl for interop tests, SoftHSM2 and OpenSC for the PKCS#11 tests, and the
# Python venv module for test tools, etcd as the reference Raft store benchmarks compare with,
# libfiu's fiu-run to make a replica's disk syncs fail (the io_errors drill), and libfaketime
# to set one replica's or agent's clock off (the clock_skew drill).
PACKAGES=(libclang-dev clang g++ make pkg-config openssl softhsm2 opensc python3-venv etcd-server etcd-client fiu-utils
  faketime)

# kubectl renders the Kubernetes manifests offline (`kubectl kustomize`): Debian's
# kubernetes-client, unless the machine has a kubectl already.
if ! command -v kubectl > /dev/null; then
    PACKAGES+=(kubernetes-client)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    echo "bootstrap: installing ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python tools for tests live in a git-ignored venv, never in the system site-packages.
REQUIREMENTS="$ROOT/deploy/requirements-test.txt"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bootstrap: creating venv at $VENV"
    python3 -m venv "$VENV"
fi
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$want" ]]; then
    echo "bootstrap: installing Python test tools"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r "$REQUIREMENTS"
    echo "$want" > "$STAMP"
fi

echo "bootstrap: ok"
