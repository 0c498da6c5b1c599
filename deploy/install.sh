#!/usr/bin/env bash
# Installs Testudo on this host under systemd: the binaries (built here, or taken from
# --bin-dir), the users, the unit files and, where none exists yet, example configs.
# Idempotent: running it again upgrades the binaries and units and keeps configs and state.
#
#   deploy/install.sh [--bin-dir DIR] [--role server|agent|both] [--prefix /usr/local]
#                     [--root DIR]   (install into DIR instead of /, e.g. for an image)
#
# Afterwards: edit /etc/testudo/server.hcl (or agent.hcl), then
#   systemctl enable --now testudo-server      (or testudo-agent)
set -euo pipefail

ROOT_DIR=""
PREFIX=/usr/local
ROLE=both
BIN_DIR=""
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --role) ROLE="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --root) ROOT_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$ROLE" in server|agent|both) ;; *) echo "install.sh: --role is server, agent or both" >&2; exit 2 ;; esac

wants() { [[ "$ROLE" == both || "$ROLE" == "$1" ]]; }

if [[ -z "$BIN_DIR" ]]; then
    echo "== Building release binaries (cargo build --release)"
    (cd "$SRC" && cargo build --release --locked -p testudo-server -p testudo-agent)
    BIN_DIR="${CARGO_TARGET_DIR:-$SRC/target}/release"
fi

as_root() { if [[ -n "$ROOT_DIR" || $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

echo "== Installing into ${ROOT_DIR:-/}"
as_root install -d -m 0755 "$ROOT_DIR$PREFIX/bin" "$ROOT_DIR/etc/systemd/system"
as_root install -d -m 0755 "$ROOT_DIR/etc/testudo"
for role in server agent; do
    wants "$role" || continue
    as_root install -m 0755 "$BIN_DIR/testudo-$role" "$ROOT_DIR$PREFIX/bin/testudo-$role"
    unit="$SRC/deploy/systemd/testudo-$role.service"
    sed "s|/usr/local/bin/|$PREFIX/bin/|" "$unit" | as_root tee "$ROOT_DIR/etc/systemd/system/testudo-$role.service" > /dev/null
    as_root chmod 0644 "$ROOT_DIR/etc/systemd/system/testudo-$role.service"
done

# Users: one per role, no login, no home. Skipped when installing into another root,
# where the image's own build makes them.
if [[ -z "$ROOT_DIR" ]]; then
    for role in server agent; do
        wants "$role" || continue
        user=$([[ "$role" == server ]] && echo testudo || echo testudo-agent)
        if ! id "$user" > /dev/null 2>&1; then
            as_root useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
        fi
    done
fi

# Example configs only where there is none: an installed config is never overwritten.
if wants server && [[ ! -e "$ROOT_DIR/etc/testudo/server.hcl" ]]; then
    group=root
    [[ -z "$ROOT_DIR" ]] && group=testudo
    as_root install -m 0640 -g "$group" "$SRC/deploy/systemd/server-aws-kms.hcl" "$ROOT_DIR/etc/testudo/server.hcl"
    echo "wrote /etc/testudo/server.hcl (an example: edit it; deploy/systemd/server-pkcs11.hcl for an HSM)"
fi
if wants agent && [[ ! -e "$ROOT_DIR/etc/testudo/agent.hcl" ]]; then
    as_root install -m 0644 "$SRC/deploy/systemd/agent.hcl" "$ROOT_DIR/etc/testudo/agent.hcl"
    echo "wrote /etc/testudo/agent.hcl (an example: edit it)"
fi
if [[ -z "$ROOT_DIR" ]] && command -v systemctl > /dev/null && [[ -d /run/systemd/system ]]; then
    as_root systemctl daemon-reload
fi
echo "Done. Next: edit /etc/testudo/*.hcl, then systemctl enable --now testudo-server (or testudo-agent)."
