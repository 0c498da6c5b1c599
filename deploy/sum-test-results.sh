#!/usr/bin/env bash
# Sums the "test result:" lines of a cargo test log into one closing line,
# "N passed, N failed", and fails if any test failed or none ran.
set -euo pipefail
log="$1"
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i + 1) ~ /^passed;?$/) p += $i
        if ($(i + 1) ~ /^failed;?$/) f += $i
    }
} END { print p + 0, f + 0 }' "$log")
echo "tests: ${passed} passed, ${failed} failed"
if (( failed > 0 || passed == 0 )); then
    exit 1
fi
