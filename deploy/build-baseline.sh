#!/usr/bin/env bash
# Builds testudo-server and testudo-agent of the commit deploy/upgrade-baseline names, for
# the upgrade drill, and prints the directory that holds them. Idempotent: a build already
# made is reused. The source comes from this clone's history (git archive), the build goes
# to a target directory of its own beside CARGO_TARGET_DIR (a first build takes as long as a
# cold build of the workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(grep -v '^#' deploy/upgrade-baseline | head -n 1 | tr -d '[:space:]')
[[ $commit =~ ^[0-9a-f]{40}$ ]] || { echo "deploy/upgrade-baseline names no commit" >&2; exit 1; }
cache=${TESTUDO_BASELINE_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/testudo/target}/../baseline}
out=$cache/$commit/bin
mkdir -p "$cache"
# One build at a time: a second run waits for the first and then reuses what it made.
exec 9>"$cache/.lock"
flock 9
if [[ -x $out/testudo-server && -x $out/testudo-agent ]]; then
  echo "$out"
  exit 0
fi
git cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "commit $commit is not in this clone's history (fetch it, or clone without --depth)" >&2
  exit 1
}
src=$cache/$commit/src
rm -rf "$src"
mkdir -p "$src" "$out"
git archive "$commit" | tar -x -C "$src"
echo "building the baseline $commit (once; a cold build takes a while)" >&2
(cd "$src" && CARGO_TARGET_DIR="$cache/target" cargo build --locked -p testudo-server -p testudo-agent --bins >&2)
cp "$cache/target/debug/testudo-server" "$cache/target/debug/testudo-agent" "$out/"
echo "$out"
