#!/usr/bin/env bash
# Peak resident memory (VmHWM: the kernel's maximum RSS of the process, file pages included) of
# pipe's stages, for issue 9 ("data and checkpoints scale with the disk, not with RAM"):
#
#   data:        nanoGPT's CPU config S (4 layers, 4 heads, 128 dims, block 64, batch 12,
#                char-level) trained for a few iterations on tiny Shakespeare (train.bin 2 MB), then
#                on the same text repeated 1000 times (train.bin 2.0 GB).
#   checkpoints: a gpt2-medium-sized model (24 layers, 16 heads, 1024 dims, vocab 50304; block 32
#                so activations stay negligible: wpe is 0.01% of the weights), 355M parameters:
#                init (create and save the weights), train 1 iteration (load the weights, save
#                weights + AdamW moments), train 1 more iteration from that checkpoint (load and
#                save the full state), `init from: resume` of it (copy), evaluate it (load the
#                weights only).
#
# Each measured command is a separate `pipe run` whose earlier stages are already cached, so its
# peak is that stage's. Usage:
#
#   scripts/measure_memory.sh [PIPE_BIN [BASELINE_BIN]]
#
# PIPE_BIN defaults to target/release/pipe. With BASELINE_BIN (e.g. a build of an older commit),
# every measurement is repeated with it, under `ulimit -v $BASELINE_LIMIT_GB` (default 20) so that
# a binary that needs more than the machine has fails alone instead of waking the OOM killer.
# WORK (default /tmp/pipe-memory) holds the stores and the 1.1 GB text; about 30 GB of disk per
# binary. KEEP=1 keeps it afterwards. PARTS="data ckpt" chooses what to measure.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
pipe_bin="$(realpath "${1:-$here/target/release/pipe}")"
baseline_bin="${2:+$(realpath "$2")}"
work="${WORK:-/tmp/pipe-memory}"
parts="${PARTS:-data ckpt}"
limit_gb="${BASELINE_LIMIT_GB:-20}"

if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y time >/dev/null
    else
        echo "needs GNU time (/usr/bin/time): apt-get install time" >&2
        exit 1
    fi
fi
command -v python3 >/dev/null || { echo "needs python3 (to read pipe's --json output)" >&2; exit 1; }

mkdir -p "$work"
text="$here/data/tinyshakespeare.txt"
big="$work/tinyshakespeare-x1000.txt"

# peak LABEL BIN CACHE ARGS...: runs `BIN --cache CACHE ARGS`, prints the peak RSS.
peak() {
    local label="$1" bin="$2" cache="$3"
    shift 3
    local log="$work/$(echo "$label" | tr -c 'a-zA-Z0-9\n' '_').log"
    local limit=""
    if [ "$bin" != "$pipe_bin" ]; then limit="ulimit -v $((limit_gb * 1024 * 1024));"; fi
    if bash -c "$limit exec /usr/bin/time -v \"\$@\"" _ "$bin" --cache "$cache" "$@" \
        >"$log.out" 2>"$log"; then
        local kb
        kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
        printf '  %-60s %8.0f MiB\n' "$label" "$(awk -v k="$kb" 'BEGIN {print k / 1024}')"
    else
        printf '  %-60s   failed (see %s)\n' "$label" "$log"
    fi
}

# run BIN CACHE ARGS...: an unmeasured run (stages to be cached), its --json document on stdout.
run() {
    local bin="$1" cache="$2"
    shift 2
    "$bin" --cache "$cache" run "$@" --json 2>"$work/last-unmeasured.log"
}

# output JSON STAGE NAME: a stage's output hash.
output() {
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(s for s in d["stages"] if s["name"]==sys.argv[1])["outputs"][sys.argv[2]])' "$2" "$3" <<<"$1"
}

object_mb() { # CACHE HASH: an object's size in MiB
    awk -v b="$(stat -c %s "$1/objects/${2:0:2}/${2:2}")" 'BEGIN {printf "%.0f", b / 1048576}'
}

data_manifest() { # TEXT 0 (data, model) | 1 (+ train) | 2 (+ evaluate)
    cat <<EOF
name: memory_data
defaults: {device: cpu, seed: 1337}
stages:
  data:
    kind: prepare
    path: $1
    tokenizer: char
  model:
    kind: init
    needs: [data]
    from: scratch
    n_layer: 4
    n_head: 4
    n_embd: 128
    block_size: 64
    dropout: 0.0
EOF
    if [ "$2" = 2 ]; then
        cat <<EOF
  evaluate:
    kind: evaluate
    needs: [model, data]
    eval_iters: 20
    batch_size: 12
EOF
    fi
    if [ "$2" = 1 ]; then
        cat <<EOF
  train:
    kind: train
    needs: [model, data]
    max_iters: 20
    eval_interval: 10
    eval_iters: 20
    log_interval: 1
    batch_size: 12
    gradient_accumulation_steps: 1
    learning_rate: 1.0e-3
    warmup_iters: 0
    lr_decay_iters: 20
    min_lr: 1.0e-4
EOF
    fi
}

ckpt_manifest() { # STAGES...: data, model, train, evaluate
    cat <<EOF
name: memory_ckpt
defaults: {device: cpu, seed: 1337}
stages:
  data:
    kind: prepare
    path: $text
    tokenizer: char
EOF
    for s in "$@"; do
        case "$s" in
        model) cat <<EOF
  model:
    kind: init
    needs: [data]
    from: scratch
    n_layer: 24
    n_head: 16
    n_embd: 1024
    block_size: 32
    vocab_size: 50304
    dropout: 0.0
EOF
            ;;
        train) cat <<EOF
  train:
    kind: train
    needs: [model, data]
    max_iters: 1
    eval_interval: 1
    eval_iters: 1
    log_interval: 1
    batch_size: 1
    gradient_accumulation_steps: 1
    learning_rate: 1.0e-4
    warmup_iters: 0
    lr_decay_iters: 1
    min_lr: 1.0e-5
EOF
            ;;
        evaluate) cat <<EOF
  evaluate:
    kind: evaluate
    needs: [train, data]
    eval_iters: 1
    batch_size: 1
EOF
            ;;
        esac
    done
}

resume_manifest() { # CKPT_HASH WITH_TRAIN
    cat <<EOF
name: memory_resume
defaults: {device: cpu, seed: 1337}
stages:
  data:
    kind: prepare
    path: $text
    tokenizer: char
  model:
    kind: init
    from: resume
    checkpoint: $1
EOF
    if [ "$2" = 1 ]; then
        cat <<EOF
  train:
    kind: train
    needs: [model, data]
    max_iters: 2
    eval_interval: 1
    eval_iters: 1
    log_interval: 1
    batch_size: 1
    gradient_accumulation_steps: 1
    learning_rate: 1.0e-4
    warmup_iters: 0
    lr_decay_iters: 1
    min_lr: 1.0e-5
EOF
    fi
}

measure_data() { # BIN TAG
    local bin="$1" tag="$2"
    local dir="$work/$tag-data"
    mkdir -p "$dir"
    for size in small big; do
        local src="$text"
        [ "$size" = big ] && src="$big"
        data_manifest "$src" 0 >"$dir/$size-prep.yaml"
        data_manifest "$src" 1 >"$dir/$size.yaml"
        data_manifest "$src" 2 >"$dir/$size-eval.yaml"
        local json
        json=$(run "$bin" "$dir/cache" "$dir/$size-prep.yaml")
        local mb
        mb=$(object_mb "$dir/cache" "$(output "$json" data train.bin)")
        peak "$tag: train config S, 20 iters, train.bin $mb MiB" "$bin" "$dir/cache" run "$dir/$size.yaml"
        peak "$tag: evaluate config S, 20 batches, train.bin $mb MiB" "$bin" "$dir/cache" run "$dir/$size-eval.yaml"
    done
}

measure_ckpt() { # BIN TAG
    local bin="$1" tag="$2"
    local dir="$work/$tag-ckpt"
    mkdir -p "$dir"
    ckpt_manifest >"$dir/0.yaml"
    ckpt_manifest model >"$dir/1.yaml"
    ckpt_manifest model train >"$dir/2.yaml"
    ckpt_manifest model train evaluate >"$dir/3.yaml"
    run "$bin" "$dir/cache" "$dir/0.yaml" >/dev/null
    peak "$tag: init scratch (create, save weights)" "$bin" "$dir/cache" run "$dir/1.yaml"
    local json w
    json=$(run "$bin" "$dir/cache" "$dir/1.yaml")
    w=$(output "$json" model ckpt)
    local n
    n=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(s for s in d["stages"] if s["name"]=="model")["metrics"]["parameters"])' <<<"$json")
    awk -v n="$n" 'BEGIN {printf "    %.1fM parameters: weights %.0f MiB, with AdamW moments %.0f MiB, training state with gradients %.0f MiB\n", n / 1e6, 4 * n / 1048576, 12 * n / 1048576, 16 * n / 1048576}'
    echo "    weights checkpoint: $(object_mb "$dir/cache" "$w") MiB"
    peak "$tag: train 1 iter (load weights, save full state)" "$bin" "$dir/cache" run "$dir/2.yaml"
    local c
    json=$(run "$bin" "$dir/cache" "$dir/2.yaml")
    c=$(output "$json" train ckpt)
    echo "    full checkpoint (weights + AdamW moments): $(object_mb "$dir/cache" "$c") MiB"
    peak "$tag: evaluate (load weights of the full checkpoint)" "$bin" "$dir/cache" run "$dir/3.yaml"
    resume_manifest "$c" 0 >"$dir/4.yaml"
    resume_manifest "$c" 1 >"$dir/5.yaml"
    peak "$tag: init from: resume (load/copy the full checkpoint)" "$bin" "$dir/cache" run "$dir/4.yaml"
    run "$bin" "$dir/cache" "$dir/4.yaml" >/dev/null
    peak "$tag: train 1 more iter (load full state, save it)" "$bin" "$dir/cache" run "$dir/5.yaml"
}

if [[ " $parts " == *" data "* ]] && [ ! -s "$big" ]; then
    echo "writing $big (tiny Shakespeare 1000 times)"
    for _ in $(seq 1000); do cat "$text"; done >"$big.partial"
    mv "$big.partial" "$big"
fi

echo "peak RSS (VmHWM) on $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB RAM"
for tagbin in "new:$pipe_bin" ${baseline_bin:+"baseline:$baseline_bin"}; do
    tag="${tagbin%%:*}"
    bin="${tagbin#*:}"
    rm -rf "$work/$tag-data" "$work/$tag-ckpt"
    for p in $parts; do
        case "$p" in
        data) measure_data "$bin" "$tag" ;;
        ckpt) measure_ckpt "$bin" "$tag" ;;
        esac
    done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work/$tag-data" "$work/$tag-ckpt"
done
