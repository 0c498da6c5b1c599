#!/usr/bin/env bash
# Compares Testudo's SPIRE-compatible .proto files with SPIRE's public definitions (as
# shipped in the crates.io package spire-api, under spire-api-sdk/proto), ignoring comments,
# options, imports and layout: message names, fields, numbers and types must match.
# Needs network access to crates.io. Usage: deploy/check-spire-protos.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${SPIRE_API_VERSION:-0.11.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && cargo init -q --name fetch_spire_api && echo "spire-api = \"=$VERSION\"" >> Cargo.toml && cargo fetch -q)
upstream="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d -exec test -d "{}/spire-api-$VERSION" \; -print -quit)/spire-api-$VERSION/spire-api-sdk/proto"
norm() {
    sed -e 's://.*$::' -e '/^\s*option /d' -e '/^\s*import /d' -e '/^\s*$/d' -e 's/\s\+/ /g' -e 's/^ //' \
        -e 's/ *= */=/g' -e 's/ *; *$/;/' -e 's/{ *}/{}/' "$1" | tr -d '\r' | grep -v '^syntax\|^package' \
        | sed -e 's/^message \(.*\) {}$/message \1 {\n}/'
}
status=0
for ours in $(cd "$ROOT/proto/proto" && find spire -name '*.proto' | sort); do
    if diff <(norm "$upstream/$ours") <(norm "$ROOT/proto/proto/$ours") > /dev/null; then
        echo "same: $ours"
    else
        echo "DIFFERS: $ours"; diff <(norm "$upstream/$ours") <(norm "$ROOT/proto/proto/$ours") || true
        status=1
    fi
done
exit $status
