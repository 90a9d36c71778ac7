#!/usr/bin/env bash
# The remote store against DVC's, back to back on one machine: push the main job's outputs to a
# shared folder, then fetch them into an empty store/cache. pipe's fetch is `pipe run` on an empty
# store (keys computed, every stage `pulled`); DVC's is `dvc pull` of the same files.
#
#   scripts/bench_remote.sh [DVC]     # DVC: the dvc command (default: dvc on PATH)
#
# Then one large object (BIG_MB, default 1024; 0 skips it): time and peak memory of each side.
# Needs a build with the remote feature (cargo build --release --features remote). Trains the main
# job once (about 2 minutes) unless its store is kept in $WORK/a.
set -euo pipefail
cd "$(dirname "$0")/.."
DVC=${1:-dvc}
PIPE=${PIPE:-$PWD/target/release/pipe}
"$PIPE" remote --help >/dev/null 2>&1 || { echo "build with: cargo build --release --features remote"; exit 2; }
WORK=${WORK:-/tmp/pipe-bench-remote}
mkdir -p "$WORK"
rm -rf "$WORK/remote-pipe" "$WORK/b" "$WORK/remote-dvc" "$WORK/dvc"
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }

# pipe: train once (kept), push everything, pull into an empty store.
"$PIPE" --cache "$WORK/a" run pipelines/train_shakespeare_char_cpu.yaml >/dev/null 2>&1
run=$(ls "$WORK/a/runs" | tail -1)
pipe_push=$(secs "$PIPE" --cache "$WORK/a" --remote "file://$WORK/remote-pipe" push "$run")
pipe_pull=$(secs "$PIPE" --cache "$WORK/b" --remote "file://$WORK/remote-pipe" run pipelines/train_shakespeare_char_cpu.yaml)
bytes=$(du -sb "$WORK/remote-pipe/objects" | cut -f1)

# DVC: the same objects as files in a tracked folder.
mkdir -p "$WORK/dvc/outputs"
for f in $(find "$WORK/remote-pipe/objects" -type f); do cp "$f" "$WORK/dvc/outputs/$(basename "$f")"; done
cd "$WORK/dvc"
"$DVC" init --no-scm -q
"$DVC" remote add -d shared "$WORK/remote-dvc" >/dev/null
"$DVC" add -q outputs
dvc_push=$(secs "$DVC" push -q)
rm -rf outputs .dvc/cache
dvc_pull=$(secs "$DVC" pull -q)
cd - >/dev/null

echo "artifacts: $(ls "$WORK/dvc/outputs" | wc -l) objects, $((bytes / 1000)) kB"
echo "push:  pipe ${pipe_push}s   dvc ${dvc_push}s   (dvc/pipe = $(echo "scale=1; $dvc_push / $pipe_push" | bc)x)"
echo "pull:  pipe ${pipe_pull}s   dvc ${dvc_pull}s   (dvc/pipe = $(echo "scale=1; $dvc_pull / $pipe_pull" | bc)x)"

# One large object (a checkpoint's size), made by a command stage: time and peak memory.
BIG_MB=${BIG_MB:-1024}
[ "$BIG_MB" -gt 0 ] || exit 0
rm -rf "$WORK/big" && mkdir -p "$WORK/big" && cd "$WORK/big"
cat > big.yaml <<YAML
name: big
stages:
  blob:
    kind: command
    cmd: head -c ${BIG_MB}M /dev/urandom > "\$PIPE_OUT/blob.bin"
    outs: [blob.bin]
YAML
"$PIPE" --cache a run big.yaml >/dev/null 2>&1
measure() { /usr/bin/time -f "%e s, %M kB peak" "$@" 2>&1 >/dev/null | tail -1; }
echo "one ${BIG_MB} MB object:"
echo "  pipe push: $(measure "$PIPE" --cache a --remote "file://$WORK/big/remote-pipe" push)"
echo "  pipe pull: $(measure "$PIPE" --cache b --remote "file://$WORK/big/remote-pipe" run big.yaml)"
mkdir -p dvc && cp a/objects/*/* dvc/blob.bin 2>/dev/null || cp "$(find a/objects -type f -size +1M | head -1)" dvc/blob.bin
cd dvc
"$DVC" init --no-scm -q
"$DVC" remote add -d shared "$WORK/big/remote-dvc" >/dev/null
echo "  dvc add:   $(measure "$DVC" add -q blob.bin)"
echo "  dvc push:  $(measure "$DVC" push -q)"
rm -rf blob.bin .dvc/cache
echo "  dvc pull:  $(measure "$DVC" pull -q)"
