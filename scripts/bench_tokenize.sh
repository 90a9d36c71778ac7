#!/usr/bin/env bash
# GPT-2 tokenization throughput of `prepare` on a corpus of documents, against nanoGPT's method
# (tiktoken in Python, one process per core: scripts/tokenize_tiktoken.py) on the same file in the
# same run, and, when PIPE_BEFORE names an older pipe binary, against its single-threaded path (one
# text file holding the same documents). Peak memory from GNU time.
#
#   scripts/bench_tokenize.sh                      # corpora of 200 MB and 1 GB
#   SIZES="50" scripts/bench_tokenize.sh           # quicker
#   PIPE_BEFORE=/tmp/head-target/release/pipe scripts/bench_tokenize.sh
#   REPEAT=3 scripts/bench_tokenize.sh             # best of 3 (a busy machine)
#
# The corpus is tiny Shakespeare (data/) cut into documents of 2-8 KB (OpenWebText's average is
# ~4.7 KB) and repeated up to the size, as JSONL. Everything is made in a temporary folder and
# removed at the end. Needs python3 (a venv with tiktoken and numpy is made in $VENV) and
# /usr/bin/time (Debian: apt-get install -y time).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-200 1024}"
VENV="${VENV:-/tmp/pipe-bench-venv}"
PIPE="${PIPE:-target/release/pipe}"
PIPE_BEFORE="${PIPE_BEFORE:-}"
PROCS="$(nproc)"
REPEAT="${REPEAT:-1}"
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }
[ -x "$PIPE" ] || cargo build --release
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q tiktoken numpy
fi
WORK="$(mktemp -d /tmp/pipe-bench-tokenize.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"

# measure LABEL SIZE KIND COMMAND...: runs COMMAND under GNU time ($REPEAT times, keeping the
# fastest) and appends a result line.
measure() {
  local label="$1" size="$2" kind="$3"; shift 3
  rm -f "$WORK/best.json"
  for _ in $(seq "$REPEAT"); do
    rm -rf "$WORK/cache"
    /usr/bin/time -v -o "$WORK/time.txt" "$@" > "$WORK/out.txt" 2> "$WORK/err.txt" || {
      cat "$WORK/err.txt" >&2; exit 1; }
    python3 - "$label" "$size" "$kind" "$WORK" <<'PY'
import json, os, sys
label, size, kind, work = sys.argv[1:]
t = open(f"{work}/time.txt").read().splitlines()
wall = next(l for l in t if "Elapsed (wall clock)" in l).split()[-1].split(":")
secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall)))
rss = int(next(l for l in t if "Maximum resident set size" in l).split()[-1]) // 1024
out = open(f"{work}/out.txt").read()
if kind == "pipe":
    m = json.loads(out)["stages"][0]["metrics"]
    tokens = m["train_tokens"] + m["val_tokens"]
else:
    tokens = json.loads(out.strip().splitlines()[-1])["tokens"]
r = {"label": label, "size_mb": int(size), "tokens": tokens, "seconds": round(secs, 2),
     "tokens_per_s": tokens / secs, "rss_mb": rss}
print(json.dumps(r), file=sys.stderr)
best = f"{work}/best.json"
if not os.path.exists(best) or json.load(open(best))["seconds"] > secs:
    json.dump(r, open(best, "w"))
PY
  done
  rm -rf "$WORK/cache"
  cat "$WORK/best.json" >> "$RESULTS"
  echo >> "$RESULTS"
}

for MB in $SIZES; do
  echo "== corpus of $MB MB" >&2
  python3 - "$WORK" "$MB" <<'PY'
import json, random, sys
work, mb = sys.argv[1], int(sys.argv[2])
paras = open("data/tinyshakespeare.txt").read().split("\n\n")
rng = random.Random(2357)
target = mb * 1_000_000
n = 0
with open(f"{work}/corpus.jsonl", "w") as j, open(f"{work}/corpus.txt", "w") as t:
    while n < target:
        i = rng.randrange(len(paras))
        doc, want = [], rng.randrange(2000, 8000)
        while sum(map(len, doc)) < want:
            doc.append(paras[i % len(paras)])
            i += 1
        text = "\n\n".join(doc)
        line = json.dumps({"text": text}) + "\n"
        j.write(line)
        t.write(text + "\n\n")
        n += len(line)
PY
  cat > "$WORK/bench.yaml" <<YAML
name: bench
stages:
  data:
    kind: prepare
    path: corpus.jsonl
    tokenizer: gpt2
    val_fraction: 0.0005
YAML
  cat > "$WORK/before.yaml" <<YAML
name: before
stages:
  data:
    kind: prepare
    path: corpus.txt
    tokenizer: gpt2
    val_fraction: 0.0005
YAML
  for threads in "$PROCS" 1; do
    measure "pipe prepare, $threads thread(s)" "$MB" pipe \
      "$PIPE" --cache "$WORK/cache" --threads "$threads" run "$WORK/bench.yaml" --json
  done
  measure "nanoGPT's method: tiktoken, $PROCS processes" "$MB" tiktoken \
    "$VENV/bin/python" scripts/tokenize_tiktoken.py "$WORK/corpus.jsonl" "$WORK/tiktoken.bin" --procs "$PROCS"
  rm -f "$WORK/tiktoken.bin"
  if [ -n "$PIPE_BEFORE" ]; then
    measure "pipe before (one text file, 1 thread)" "$MB" pipe \
      "$PIPE_BEFORE" --cache "$WORK/cache" run "$WORK/before.yaml" --json
  fi
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| corpus | method | tokens | seconds | tokens/s | peak RSS |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['size_mb']} MB | {r['label']} | {r['tokens']:,} | {r['seconds']:.1f} | "
          f"{r['tokens_per_s'] / 1e6:.1f}M | {r['rss_mb']} MB |")
PY
