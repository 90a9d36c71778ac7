#!/usr/bin/env bash
# `pipe compare` over 1,000 run records: one real sweep's run copied 1,000 times with a different
# learning rate in each plan.json (and fresh run ids), then `pipe compare --manifest` timed with
# hyperfine (or `time` where it is missing). Nothing is trained 1,000 times: compare reads only run
# records (plan.json, log.jsonl) and, for a cached train stage, its metrics.json.
#   scripts/bench_compare.sh [N]      (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
cargo build --release --quiet
PIPE=$PWD/target/release/pipe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
python3 - <<'PY'
import random
random.seed(1)
w = ["the king is dead. ", "long live the queen! ", "to be, or not to be: "]
open("text.txt", "w").write("".join(random.choice(w) for _ in range(400)))
PY
cat > m.yaml <<'YAML'
name: bench
stages:
  data: {kind: prepare, path: text.txt, tokenizer: char}
  model: {kind: init, needs: [data], from: scratch, n_layer: 1, n_head: 2, n_embd: 16, block_size: 16}
  train: {kind: train, needs: [model, data], max_iters: 40, eval_interval: 10, eval_iters: 2, batch_size: 4, lr_decay_iters: 40}
YAML
"$PIPE" run m.yaml >/dev/null 2>&1
src=$(ls cache/runs | head -1)
python3 - "$N" "$src" <<'PY'
import json, os, shutil, sys
n, src = int(sys.argv[1]), sys.argv[2]
runs = "cache/runs"
plan = json.load(open(f"{runs}/{src}/plan.json"))
log = open(f"{runs}/{src}/log.jsonl").read()
for i in range(n):
    rid = f"20260101-{i // 10000:06d}-{i % 10000:04x}"
    d = f"{runs}/{rid}"
    os.makedirs(d)
    plan["stages"][2]["params"]["learning_rate"] = 1e-4 * (1 + i)
    json.dump(plan, open(f"{d}/plan.json", "w"))
    open(f"{d}/log.jsonl", "w").write(log)
PY
echo "== pipe compare over $((N + 1)) run records ($(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'))"
if command -v hyperfine >/dev/null; then
  hyperfine --warmup 1 --runs 5 "$PIPE compare --manifest m.yaml --json > /dev/null"
else
  for _ in 1 2 3; do /usr/bin/time -f "%e s, %M KB max RSS" "$PIPE" compare --manifest m.yaml --json > /dev/null; done
fi
