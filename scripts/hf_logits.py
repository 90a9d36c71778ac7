"""Prints transformers' logits for token ids, for the export test:
    python3 scripts/hf_logits.py MODEL_DIR 1,2,3
Loads MODEL_DIR with GPT2LMHeadModel.from_pretrained (as a user would) and prints
{"logits": [[...] per position], "loss": mean next-token cross entropy} as JSON on stdout."""
import json
import sys

import torch
from transformers import GPT2LMHeadModel

model = GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([[int(x) for x in sys.argv[2].split(",")]])
with torch.no_grad():
    out = model(ids, labels=ids)
print(json.dumps({"logits": out.logits[0].tolist(), "loss": out.loss.item()}))
