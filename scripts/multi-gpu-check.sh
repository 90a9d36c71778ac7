#!/usr/bin/env bash
# Data-parallel training on several GPUs over NCCL, for the first person with a machine of 2 or
# more NVIDIA GPUs: no multi-GPU run of pipe has been verified yet (the sessions that built it had
# at most one GPU). It prints, and exits non-zero when a check fails:
#   1. losses: nanoGPT's train_shakespeare_char (pipelines/train_shakespeare_char.yaml) for ITERS
#      iterations on 1 GPU and on N GPUs (all-reduce, then ZeRO-1), with the same global batch
#      (gradient_accumulation_steps 8); every evaluation's val loss side by side. N ranks compute
#      what 1 rank computes up to the order of the reduction, so the gap must stay under 1e-3.
#   2. tokens/s at 1, 2, 4 and 8 GPUs (up to the machine's count), pipe `--ranks N` against
#      PyTorch DDP over NCCL on nanoGPT's model and the same global batch
#      (scripts/bench_pytorch.py --ddp --cuda under torchrun).
#
#   scripts/multi-gpu-check.sh            # needs cargo, ../shared/data/tinyshakespeare.txt, and a
#                                         # Python with torch for PyTorch's numbers (PYTHON)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${PIPE_DATA:-../shared/data/tinyshakespeare.txt}
ITERS=${ITERS:-200}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/pipe-multi-gpu}
gpus=$(nvidia-smi --list-gpus | wc -l)
[ "$gpus" -ge 2 ] || { echo "multi-gpu-check: needs 2 or more GPUs, this machine shows $gpus"; exit 1; }
cargo build --release --features cuda || exit 1
PIPE=$PWD/target/release/pipe
rm -rf "$WORK" && mkdir -p "$WORK"
failed=()

train() { # ranks zero_stage iters -> the run's JSON document on stdout
    "$PIPE" --cache "$WORK/store-$1-$2" run pipelines/train_shakespeare_char.yaml --json \
        --ranks "$1" --set data.path="$DATA" --set device=cuda --set dtype=tf32 \
        --set train.max_iters="$3" --set train.lr_decay_iters="$3" --set train.eval_interval=50 \
        --set train.gradient_accumulation_steps=8 --set train.zero_stage="$2" \
        --set sample.num_samples=1 --set sample.max_new_tokens=1 2>"$WORK/log-$1-$2"
}

# The 8 micro-steps of each iteration divide among 2, 4 or 8 ranks.
many=2
while [ $((many * 2)) -le "$gpus" ] && [ $((many * 2)) -le 8 ]; do many=$((many * 2)); done
echo "== losses: 1 GPU against $many GPUs, $ITERS iterations"
train 1 0 "$ITERS" >"$WORK/one.json" || failed+=(one-gpu)
for zero in 0 1; do
    train "$many" "$zero" "$ITERS" >"$WORK/many-$zero.json" || { failed+=("ranks-zero$zero"); continue; }
    "$PY" - "$WORK/one.json" "$WORK/many-$zero.json" "$many" "$zero" <<'PY' || failed+=("losses-zero$zero")
import json, sys
def evals(path):
    doc = json.load(open(path))
    train = next(s for s in doc["stages"] if s["name"] == "train")
    return train["metrics"]["final_val_loss"], train["metrics"]
one, m1 = evals(sys.argv[1])
many, mn = evals(sys.argv[2])
gap = abs(one - many) / abs(one)
print(f"final val loss: 1 GPU {one:.5f}, {sys.argv[3]} GPUs (zero_stage {sys.argv[4]}) {many:.5f}, gap {gap:.1e}")
sys.exit(0 if gap < 1e-3 else 1)
PY
done

echo "== tokens/s, global batch 8 x 64 x 256 tokens"
printf '%-8s %14s %12s %16s\n' GPUs "pipe tok/s" "comm share" "PyTorch DDP tok/s"
for n in 1 2 4 8; do
    [ "$n" -le "$gpus" ] || break
    doc=$(train "$n" 0 100) || { failed+=("bench-$n"); continue; }
    pipe_row=$("$PY" -c '
import json, sys
m = next(s for s in json.load(sys.stdin)["stages"] if s["name"] == "train")["metrics"]
share = m.get("data_parallel", {}).get("comm_share")
print("%14.0f %12s" % (m["tokens_per_second"], "-" if share is None else "%.1f%%" % (100 * share)))' <<<"$doc")
    torch_row=$("$PY" -m torch.distributed.run --standalone --nproc_per_node "$n" \
        scripts/bench_pytorch.py --ddp --cuda 2>/dev/null | sed -n 's/.* \([0-9]*\) tokens\/s.*/\1/p')
    printf '%-8s %s %16s\n' "$n" "$pipe_row" "${torch_row:-?}"
done

if [ ${#failed[@]} -eq 0 ]; then
    echo "multi-gpu-check: all passed"
else
    echo "multi-gpu-check: FAILED: ${failed[*]} (logs in $WORK)"
    exit 1
fi
