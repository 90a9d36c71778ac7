#!/usr/bin/env bash
# pipe's CPU ISA paths and PyTorch, back to back on this machine: `pipe bench` on the widest path
# this CPU has (the default build), then on the AVX2 path (a --no-default-features build, in
# target/avx2; on an AVX2-only CPU both are the AVX2 path), then scripts/bench_pytorch.py (eager
# and torch.compile). Needs Python with torch ($PIPE_TEST_PYTHON or python3).
#
#   scripts/bench_isa.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PIPE_TEST_PYTHON:-python3}"
cargo build --release --quiet
CARGO_TARGET_DIR=target/avx2 cargo build --release --quiet --no-default-features --bin pipe
grep -m1 "model name" /proc/cpuinfo
echo "== pipe, default build"; target/release/pipe bench
echo "== pipe, --no-default-features (AVX2 path)"; target/avx2/release/pipe bench
echo "== PyTorch"; "$py" scripts/bench_pytorch.py
