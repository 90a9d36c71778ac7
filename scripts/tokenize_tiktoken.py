#!/usr/bin/env python3
"""nanoGPT's way of tokenizing a corpus, for scripts/bench_tokenize.sh to compare pipe with.

nanoGPT's data/openwebtext/prepare.py runs `dataset.map(process, num_proc=...)`, where `process` is
`enc.encode_ordinary(text)` followed by `enc.eot_token`, then writes the ids to a uint16 memmap. This
does the same with a multiprocessing.Pool of one process per core over a JSONL file (the JSON parsing
happens in the workers too), writing uint16 ids as they come back, in document order:

    python3 scripts/tokenize_tiktoken.py corpus.jsonl out.bin [--procs N] [--field text]

It prints one JSON line: documents, tokens, seconds, tokens_per_second. Needs `pip install tiktoken
numpy`; offline, tiktoken is given the r50k_base ranks that tiktoken-rs bundles (the same file as the
one tiktoken downloads, whose sha256 tiktoken checks): "gpt2" and "r50k_base" are the same encoding.
"""
import argparse
import glob
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time

import tiktoken

R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"


def gpt2_encoding():
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline
        found = sorted(glob.glob(os.path.expanduser(
            "~/.cargo/registry/src/*/tiktoken-rs-*/assets/r50k_base.tiktoken")))
        if not found:
            raise SystemExit(f"tiktoken cannot download its ranks ({e}) and no local r50k_base.tiktoken was found")
        cache = tempfile.mkdtemp()
        shutil.copy(found[-1], os.path.join(cache, hashlib.sha1(R50K_URL.encode()).hexdigest()))
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        return tiktoken.get_encoding("r50k_base")


enc = None
field = "text"


def init(f):
    global enc, field
    enc = gpt2_encoding()
    field = f


def process(line):
    # nanoGPT's process(): encode_ordinary ignores special tokens; then the end-of-text token.
    ids = enc.encode_ordinary(json.loads(line)[field])
    ids.append(enc.eot_token)
    import numpy as np  # here, so make_tiktoken_fixture.py can import this file without numpy

    return np.array(ids, dtype=np.uint16).tobytes()


def lines(path):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    ap.add_argument("--field", default="text")
    a = ap.parse_args()
    start = time.time()
    docs = tokens = 0
    with mp.Pool(a.procs, initializer=init, initargs=(a.field,)) as pool, open(a.out, "wb") as out:
        for ids in pool.imap(process, lines(a.corpus), chunksize=64):
            out.write(ids)
            docs += 1
            tokens += len(ids) // 2
    secs = time.time() - start
    print(json.dumps({"documents": docs, "tokens": tokens, "seconds": round(secs, 2),
                      "tokens_per_second": round(tokens / secs)}))


if __name__ == "__main__":
    main()
