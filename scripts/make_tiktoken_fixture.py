#!/usr/bin/env python3
"""Makes tests/fixtures/tiktoken/: documents (docs.jsonl) and their GPT-2 token ids from tiktoken
(tokens.json), which tests/prepare.rs checks pipe's own GPT-2 encoder against.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install tiktoken
    /tmp/venv/bin/python scripts/make_tiktoken_fixture.py

tiktoken downloads its ranks on first use. Offline, it is given the r50k_base.tiktoken file that
tiktoken-rs bundles (the same file; tiktoken checks its sha256 against the official one): "gpt2" and
"r50k_base" are the same ranks and the same pattern.
"""
import json
import pathlib

import tiktoken
from tokenize_tiktoken import gpt2_encoding  # the same encoding, offline too

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tiktoken"


def documents():
    shakespeare = (ROOT / "data" / "tinyshakespeare.txt").read_text()
    docs = [d for d in shakespeare[:6000].split("\n\n")]
    docs += [
        "",
        " ",
        "\n\n\n",
        "It's, isn't it? They'll've gone; we'd, I'm, you're. 'Tis 'TIS O'Neil's.",
        "Spaces:  two,   three,\t\ttabs,\r\nCRLF, trailing   ",
        "   leading spaces and a final newline\n",
        "Numbers 1 12 123 1234 12345 3.14159 1,000,000 ½ ٣ Ⅻ 𝟙𝟚",
        "Unicode: naïve café Ωμέγα Жизнь 中文 日本語 한국어 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 e\u0301 \u00a0nbsp \u3000ideographic",
        "Emoji 😀👍🏽🏳️\u200d🌈 and symbols ©®™ → ← ≠ ≤ ∞ — – … «quotes» “curly” ‘single’",
        "<|endoftext|> is plain text here, as in nanoGPT's encode_ordinary.",
        "Code: fn main() { let x = vec![1, 2, 3]; println!(\"{x:?}\"); } // done\n\tindented\n",
        "URLs https://example.com/a?b=c&d=e#f and user@example.com, 2024-01-02T03:04:05Z.",
        "=" * 300 + " " * 300 + "x" * 300,
        "\u0085next line\u2028line separator\u2029paragraph\u000bvtab\u000cff",
    ]
    return docs


def main():
    enc = gpt2_encoding()
    docs = documents()
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    tokens = {
        "encoding": enc.name,
        "tiktoken": tiktoken.__version__,
        "documents": [enc.encode_ordinary(d) for d in docs],
    }
    (OUT / "tokens.json").write_text(json.dumps(tokens) + "\n")
    print(f"{len(docs)} documents, {sum(map(len, tokens['documents']))} tokens -> {OUT}")


if __name__ == "__main__":
    main()
