#!/usr/bin/env bash
# Data-parallel training on this machine (issue 22's benchmark), with a build that has `--features mpi`:
#
#   throughput: nanoGPT's CPU config S (pipelines/train_shakespeare_char_cpu.yaml: 4 layers, 128
#               dims, block 64) with a global batch of 2 micro-steps of 6 sequences, ITERS
#               iterations (default 200), on 1 rank × all cores and on 2 ranks × half the cores
#               each: tokens/s from the run's metrics and the share of rank 0's step time spent
#               in communication (comm_share); then PyTorch eager on the same model and batch,
#               one process and DDP over gloo on 2 processes (as nanoGPT's train.py under torchrun).
#               pipe's tokens/s is over the whole stage (its two evaluations and checkpoint
#               included); PyTorch's is the median step.
#   memory:     each rank's peak RSS (/usr/bin/time's maximum resident set) for a 6-layer,
#               512-dim model (19.3M parameters: weights, gradients and each AdamW moment are 77 MB)
#               trained 2 iterations on 2 ranks, with all-reduce and with ZeRO-1 (each rank then
#               holds half of the moments).
#
#   scripts/bench_data_parallel.sh        # WORK (default /tmp/pipe-bench-dp) holds the stores
set -euo pipefail
cd "$(dirname "$0")/.."
iters="${ITERS:-200}"
work="${WORK:-/tmp/pipe-bench-dp}"
rm -rf "$work" && mkdir -p "$work"
cargo build --release --features mpi --quiet
pipe="$PWD/target/release/pipe"
root=()
[ "$(id -u)" = 0 ] && root=(--allow-run-as-root)

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
echo
echo "== throughput: config S, global batch 2 x 6 x 64 tokens, $iters iterations"
printf '%-22s %12s %12s\n' "" "tokens/s" "comm share"
for ranks in 1 2; do
    doc=$("$pipe" --cache "$work/s$ranks" run pipelines/train_shakespeare_char_cpu.yaml --json \
        --ranks "$ranks" --set train.max_iters="$iters" --set train.lr_decay_iters="$iters" \
        --set train.eval_interval=100000 --set train.eval_iters=2 --set train.batch_size=6 \
        --set train.gradient_accumulation_steps=2 --set sample.num_samples=1 \
        --set sample.max_new_tokens=1 2>"$work/s$ranks.log")
    python3 -c '
import json, sys
ranks, cores = int(sys.argv[1]), int(sys.argv[2])
m = next(s for s in json.load(sys.stdin)["stages"] if s["name"] == "train")["metrics"]
share = m.get("data_parallel", {}).get("comm_share")
threads = max(cores // ranks, 1)
label = "%d rank%s x %d thread%s" % (ranks, "s" * (ranks > 1), threads, "s" * (threads > 1))
share = "-" if share is None else "%.1f%%" % (100 * share)
print("%-22s %12.0f %12s" % (label, m["tokens_per_second"], share))
' "$ranks" "$(nproc)" <<<"$doc"
done

# The peer: PyTorch eager on the same model and global batch, one process, then DDP over gloo as
# nanoGPT's train.py runs under torchrun (PYTHON: a Python with torch; default the CI venv's).
py="${PYTHON:-$HOME/.cache/pipe-ci-venv/bin/python}"
if "$py" -c "import torch" 2>/dev/null; then
    "$py" scripts/bench_pytorch.py --ddp 2>/dev/null
    "$py" -m torch.distributed.run --standalone --nproc_per_node 2 scripts/bench_pytorch.py --ddp 2>/dev/null
else
    echo "(no torch at $py: set PYTHON for PyTorch's numbers)"
fi

echo
echo "== memory: 6 layers x 512 dims (19.3M parameters), 2 ranks, peak RSS of each rank"
mkdir -p "$work/pipelines" && ln -sfn "$PWD/stages" "$work/stages" && ln -sfn "$PWD/data" "$work/data"
cat > "$work/pipelines/mem.yaml" <<'EOF'
name: dp_memory
defaults: {seed: 1}
stages:
  data: {use: prepare_shakespeare_char}
  model: {kind: init, needs: [data], from: scratch, n_layer: 6, n_head: 8, n_embd: 512, block_size: 64, dropout: 0.0}
  train: {kind: train, needs: [model, data], max_iters: 2, eval_interval: 1000, eval_iters: 1,
          batch_size: 2, gradient_accumulation_steps: 2, log_interval: 1}
EOF
for zero in 0 1; do
    mpirun -np 2 --oversubscribe "${root[@]}" /usr/bin/time -f "rank peak RSS %M KB" \
        "$pipe" --cache "$work/mem" run "$work/pipelines/mem.yaml" --set train.zero_stage="$zero" \
        2>&1 >/dev/null | sed -n "s/^rank peak RSS \([0-9]*\) KB/\1/p" \
        | awk -v z="$zero" '{ printf "zero_stage %s: rank peak RSS %.0f MB\n", z, $1 / 1024 }'
done
