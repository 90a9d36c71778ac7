"""Writes tests/fixtures/gpt2-mini: a small random GPT-2 saved by Hugging Face transformers, plus the
logits and loss transformers computes for a fixed token sequence. The engine's parity test loads the
folder exactly as it would load real gpt2 weights and compares.

    python3 -m pip install torch transformers safetensors
    python3 scripts/make_gpt2_fixture.py
"""
import json
import pathlib

import torch
from transformers import GPT2Config, GPT2LMHeadModel

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gpt2-mini"
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=32)
model = GPT2LMHeadModel(config).eval()
# Random (non-zero) biases and LayerNorm parameters, so the test exercises every tensor.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("bias") or ".ln_" in name:
            p.add_(torch.randn_like(p) * 0.1)
model.save_pretrained(out, safe_serialization=True)
ids = [(i * 37 + 11) % 97 for i in range(20)]
with torch.no_grad():
    res = model(torch.tensor([ids]), labels=torch.tensor([ids]))
ref = {
    "token_ids": ids,
    "logits": res.logits[0].flatten().tolist(),
    "loss": res.loss.item(),
    "torch_version": torch.__version__,
    "notes": "GPT2LMHeadModel in eval mode, float32; loss = mean next-token cross entropy (labels=ids).",
}
(out / "reference.json").write_text(json.dumps(ref))
print("wrote", out, "loss", ref["loss"])
