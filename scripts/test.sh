#!/usr/bin/env bash
# The test suite: unit tests, the engine against references, and end-to-end runner tests.
# Tests that need ../shared (tiny Shakespeare, the tiny-gpt2 fixture) or Python with transformers
# skip with a printed reason when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets -- --nocapture 2>&1 | grep -vE '^(transformer\.|    Finished|     Running)' || exit "${PIPESTATUS[0]}"
