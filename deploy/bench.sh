#!/usr/bin/env bash
# Runs every benchmark and writes what each printed, under the command that printed it, with
# the machine and the date, to docs/benchmarks-latest.md (overwritten each run; the curated
# figures and what they mean are in docs/benchmarks.md). BENCH_SECONDS sets the length of
# the timed benchmarks; CARGO the cargo to use.
set -euo pipefail
cargo="${CARGO:-cargo}"
seconds="${BENCH_SECONDS:-10}"
out="docs/benchmarks-latest.md"
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT

{
    echo "# Benchmarks: the latest \`make bench\`"
    echo
    echo "Written by \`deploy/bench.sh\` (\`make bench BENCH_SECONDS=${seconds}\`); docs/benchmarks.md says what the figures mean."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
} > "$tmp"

run() {
    echo "== $*" >&2
    {
        echo "## \`$*\`"
        echo
        echo '```'
    } >> "$tmp"
    "$@" | tee -a "$tmp"
    echo '```' >> "$tmp"
    echo >> "$tmp"
}

# The multi-process benchmarks drive release builds of the binaries.
"$cargo" build --release -p testudo-server --bin testudo-server -p testudo-agent --bin testudo-agent
run "$cargo" bench -p testudo-raft-store --bench raft_writes -- --seconds "$seconds"
run "$cargo" bench -p testudo-server --bench svid_mint -- --seconds "$seconds"
run "$cargo" bench -p testudo-server --bench bundle_endpoint -- --seconds "$seconds"
run "$cargo" bench -p testudo-agent --bench workload_api
run "$cargo" bench -p testudo-kms --bench signing -- --seconds "$seconds"
run "$cargo" bench -p testudo-chaos-tests --bench failover -- --rounds 20
run "$cargo" bench -p testudo-chaos-tests --bench agent_sync -- --agents 10000 --per-agent 10
run "$cargo" bench -p testudo-chaos-tests --bench entry_delivery -- --rounds 200 --agents 1000
run "$cargo" bench -p testudo-chaos-tests --bench nested_rotation -- --rounds 10
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
