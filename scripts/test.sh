#!/usr/bin/env bash
# The test suite: unit tests (the runner's and the engine crate's), the engine against references,
# and end-to-end runner tests.
# Tests that need ../shared (tiny Shakespeare, the tiny-gpt2 fixture) or Python with transformers
# skip with a printed reason when those are absent. Python with tensorboard ($PIPE_TEST_PYTHON, else
# python3) is required: tests/runner.rs reads pipe's event files with TensorBoard's own reader.
set -uo pipefail
cd "$(dirname "$0")/.."
# TensorBoard for the event-file tests: $PIPE_TEST_PYTHON if it has it, else python3 if it has it,
# else a venv made once in ~/.cache/pipe-test-venv (pip install tensorboard: about 20 s).
if ! "${PIPE_TEST_PYTHON:-python3}" -c "import tensorboard" 2>/dev/null; then
  venv="$HOME/.cache/pipe-test-venv"
  if ! "$venv/bin/python" -c "import tensorboard" 2>/dev/null; then
    echo "== installing tensorboard into $venv (for the event-file tests)"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet tensorboard \
      || echo "!! could not install tensorboard: the event-file tests will fail"
  fi
  export PIPE_TEST_PYTHON="$venv/bin/python"
fi
log=$(mktemp)
cargo test --release --workspace --all-targets -- --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# One closing line for the whole suite (cargo prints one per test binary).
passed=$(grep -oE 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$status"
