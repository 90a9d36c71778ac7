#!/usr/bin/env bash
# The CUDA engine's checks, on a machine with an NVIDIA GPU, in one go:
#   1. build (or take prebuilt binaries: PIPE_BIN_DIR holding `pipe` and `cuda-tests`);
#   2. the parity tests against the CPU engine (tests/cuda.rs; a missing GPU is a failure here),
#      then NCCL at world size 1 (every collective round-tripped; a missing NCCL is a failure);
#   3. the benchmark table (`pipe bench --device cuda`): ms/iter and tokens/s for config S,
#      nanoGPT's GPU config and GPT-2 124M, with f32, TF32 and bf16 products;
#   4. nanoGPT's train_shakespeare_char recipe on the GPU, capped at PIPE_TRAIN_SECONDS (240 s).
# Each step runs even if an earlier one failed; the exit status says whether all passed.
#
#   scripts/gpu-check.sh                      # needs cargo, and ../shared/data/tinyshakespeare.txt
#   PIPE_BIN_DIR=.gpu PIPE_DATA=.gpu/tinyshakespeare.txt scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${PIPE_DATA:-../shared/data/tinyshakespeare.txt}
TRAIN_SECONDS=${PIPE_TRAIN_SECONDS:-240}
TRAIN_DTYPE=${PIPE_TRAIN_DTYPE:-tf32}
failed=()

# cudarc loads the driver, cuBLAS and NVRTC at run time: put the usual folders on the path.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# NCCL's wheels ship only libnccl.so.2, which cudarc loads only as libnccl.so: link it (pipe's
# own `--ranks N` does the same for the ranks it starts; PIPE_NCCL_LIB may name the file).
nccl=${PIPE_NCCL_LIB:-$(for d in ${LD_LIBRARY_PATH//:/ } /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/libnccl.so.2" ] && echo "$d/libnccl.so.2" && break; done)}
if [ -n "$nccl" ]; then
    mkdir -p /tmp/pipe-gpu-check-nccl && ln -sfn "$nccl" /tmp/pipe-gpu-check-nccl/libnccl.so
    LD_LIBRARY_PATH="/tmp/pipe-gpu-check-nccl:$LD_LIBRARY_PATH"
fi
export LD_LIBRARY_PATH

if [ -n "${PIPE_BIN_DIR:-}" ]; then
    PIPE=$PIPE_BIN_DIR/pipe
    TESTS=$PIPE_BIN_DIR/cuda-tests
else
    echo "== build"
    cargo build --release --features cuda || exit 1
    TESTS=$(cargo test --release --features cuda --test cuda --no-run --message-format=json-render-diagnostics |
        python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin)
                   if m.get("executable") and m["target"]["kind"] == ["test"]][-1])') || exit 1
    PIPE=target/release/pipe
fi

PIPE="$(cd "$(dirname "$PIPE")" && pwd)/$(basename "$PIPE")" # absolute: tests run it from other folders

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true

echo "== parity tests against the CPU engine"
PIPE_BIN="$PIPE" PIPE_REQUIRE_GPU=1 PIPE_REQUIRE_NVRTC=1 "$TESTS" --test-threads=1 --nocapture \
    --skip nccl_world_size_one || failed+=(tests)

echo "== NCCL at world size 1 (${nccl:-no libnccl.so.2 found on LD_LIBRARY_PATH})"
PIPE_REQUIRE_GPU=1 "$TESTS" --exact nccl_world_size_one_round_trips_every_collective --nocapture \
    || failed+=(nccl)

echo "== benchmark"
"$PIPE" bench --device cuda || failed+=(bench)

echo "== train_shakespeare_char on the GPU (dtype $TRAIN_DTYPE, at most ${TRAIN_SECONDS}s)"
if [ -f "$DATA" ]; then
    STORE=$(mktemp -d)
    start=$(date +%s)
    timeout "$TRAIN_SECONDS" "$PIPE" --cache "$STORE" run pipelines/train_shakespeare_char.yaml \
        --set data.path="$DATA" --set device=cuda --set dtype="$TRAIN_DTYPE" ${PIPE_TRAIN_SET:-}
    rc=$?
    echo "training: exit $rc after $(( $(date +%s) - start ))s"
    [ $rc -eq 0 ] || failed+=(training)
    "$PIPE" --cache "$STORE" show || true
else
    echo "skipped: no data at $DATA (set PIPE_DATA)"
    failed+=(training-data)
fi

if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu-check: all passed"
else
    echo "gpu-check: FAILED: ${failed[*]}"
    exit 1
fi
