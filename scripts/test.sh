#!/usr/bin/env bash
# The test suite: unit tests, the engine against references, and end-to-end runner tests.
# Tests that need ../shared (tiny Shakespeare, the tiny-gpt2 fixture) or Python with transformers
# skip with a printed reason when those are absent.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
cargo test --release --all-targets -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# One closing line for the whole suite (cargo prints one per test binary).
passed=$(grep -oE 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$status"
