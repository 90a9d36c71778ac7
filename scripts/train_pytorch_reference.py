"""nanoGPT's README CPU recipe in PyTorch (the model of scripts/bench_pytorch.py, nanoGPT's training
loop), to compare pipe's loss curve with PyTorch's on the same machine:

    python3 scripts/train_pytorch_reference.py ../shared/data/tinyshakespeare.txt [SEED]
"""
import math
import sys
import time

import torch

sys.argv += [] if len(sys.argv) > 2 else ["1337"]
exec(open(__file__.replace("train_pytorch_reference.py", "bench_pytorch.py")).read().split("def bench(")[0])

text = open(sys.argv[1]).read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n = int(len(data) * 0.9)
train, val = data[:n], data[n:]
torch.manual_seed(int(sys.argv[2]))
torch.set_num_threads(2)
B, T, iters, eval_iters = 12, 64, 2000, 20
model = GPT(4, 4, 128, T, len(chars), 0.0)
decay = [p for p in model.parameters() if p.dim() >= 2]
nodecay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))


def batch(d):
    ix = torch.randint(len(d) - T, (B,))
    return torch.stack([d[i : i + T] for i in ix]), torch.stack([d[i + 1 : i + 1 + T] for i in ix])


def lr_at(it, warmup=100, decay_iters=2000, lr=1e-3, min_lr=1e-4):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    return min_lr + 0.5 * (1 + math.cos(math.pi * (it - warmup) / (decay_iters - warmup))) * (lr - min_lr)


t0 = time.time()
for it in range(iters + 1):
    for g in opt.param_groups:
        g["lr"] = lr_at(it)
    if it % 250 == 0:
        model.eval()
        with torch.no_grad():
            losses = {s: sum(model(*batch(d)).item() for _ in range(eval_iters)) / eval_iters for s, d in (("train", train), ("val", val))}
        model.train()
        print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({time.time() - t0:.0f}s)", flush=True)
    if it == iters:
        break
    loss = model(*batch(train))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
