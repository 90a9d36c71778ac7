#!/usr/bin/env bash
# Imports every config of a nanoGPT checkout (config/*.py) with `pipe import nanogpt --device=cpu`
# and checks each manifest: it loads (`pipe status`), and it runs a few iterations on a CPU with
# small overrides, reading TEXT for the data and HF_DIR (a GPT-2 folder in Hugging Face's layout,
# e.g. ../shared/fixtures/tiny-gpt2) for gpt2 weights. train_gpt2.py's model is GPT-2 124M: it is
# shrunk with --n_layer etc. so it runs here; the others keep their models.
#
#   scripts/check_nanogpt_configs.sh NANOGPT_DIR TEXT HF_DIR
set -euo pipefail
nanogpt=$(cd "$1" && pwd)
text=$(realpath "$2")
hf=$(realpath "$3")
root=$(cd "$(dirname "$0")/.." && pwd)
pipe="$root/target/release/pipe"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export PIPE_CACHE="$work/cache"
for cfg in "$nanogpt"/config/*.py; do
  name=$(basename "$cfg" .py)
  small=(--max_iters=2 --eval_interval=2 --eval_iters=1 --batch_size=2 --gradient_accumulation_steps=1)
  case "$name" in
    train_gpt2 | train_shakespeare_char) small+=(--n_layer=1 --n_head=2 --n_embd=32 --block_size=32) ;;
    eval_*) small=(--eval_iters=1 --batch_size=1) ;;
  esac
  "$pipe" import nanogpt "$cfg" --device=cpu "${small[@]}" -o "$name.yaml" 2>/dev/null
  sets=(--set "data.path=$text")
  if grep -q "from: gpt2" "$name.yaml"; then sets+=(--set "model.hf_dir=$hf"); fi
  "$pipe" status "$name.yaml" "${sets[@]}" >/dev/null
  "$pipe" run "$name.yaml" "${sets[@]}" --json > "$name.json" 2>"$name.log" \
    || { echo "$name: FAILED"; tail -5 "$name.log"; exit 1; }
  echo "$name: ok ($(grep -o '"kind": "[a-z]*"' "$name.json" | cut -d'"' -f4 | tr '\n' ' '))"
done
