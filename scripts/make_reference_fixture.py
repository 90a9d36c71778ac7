"""Writes tests/fixtures/reference: llm.c's test_gpt2.c for pipe's engine. PyTorch computes, on a
tiny nanoGPT model (float32, CPU), every parameter's gradient for one batch and then 10 training
steps exactly as nanoGPT's train.py takes them: lr = get_lr(it), forward, backward,
clip_grad_norm_(1.0), torch.optim.AdamW (configure_optimizers' groups: weight decay on tensors of 2+
dimensions only). tests/reference.rs loads the initial weights into pipe's engine, repeats both and
compares every tensor. The fixture is committed, so the test needs no Python.

    python3 -m pip install torch safetensors
    python3 scripts/make_reference_fixture.py

Files: reference.safetensors holds init.<name> (weights before training), grad.<name> (gradients of
the mean cross-entropy of the batch at the initial weights), final.<name> (weights after 10 steps)
and exp_avg.<name> / exp_avg_sq.<name> (AdamW's moments after 10 steps), with nanoGPT's state-dict
names (lm_head.weight is tied to transformer.wte.weight and not stored). reference.json holds the
config, the hyper-parameters, the batch, and per step the lr, the loss and the gradient norm
(before clipping).
"""
import json
import math
import pathlib
import sys

import torch
import torch.nn as nn
from torch.nn import functional as F
from safetensors.torch import save_file

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(1337)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

config = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, bias=True, dropout=0.0)
train = dict(
    batch_size=4,
    seq_len=16,
    steps=10,
    learning_rate=1e-3,
    min_lr=1e-4,
    warmup_iters=3,
    lr_decay_iters=8,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
    grad_clip=1.0,
)


# nanoGPT's model.py (the explicit attention path; dropout 0, so no Dropout modules): its blocks from
# nanogpt_model.py, with this fixture's own init below.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nanogpt_model import Block  # noqa: E402


class GPT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c["vocab_size"], c["n_embd"]),
                wpe=nn.Embedding(c["block_size"], c["n_embd"]),
                h=nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
                ln_f=nn.LayerNorm(c["n_embd"], bias=c["bias"]),
            )
        )
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c["n_layer"]))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


# nanoGPT's train.py get_lr.
def get_lr(it):
    lr, min_lr = train["learning_rate"], train["min_lr"]
    warmup, decay_iters = train["warmup_iters"], train["lr_decay_iters"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    decay_ratio = (it - warmup) / (decay_iters - warmup)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)


model = GPT(config)
# Non-zero biases and LayerNorm parameters, so every gradient path carries signal; matrices at 3x
# nanoGPT's init scale, so the gradient norm starts above grad_clip (steps 0-3 are clipped) and falls
# below it (steps 4-9 are not): both branches of clip_grad_norm_ run.
with torch.no_grad():
    for p in model.parameters():
        if p.dim() >= 2:
            p.mul_(3.0)
    for name, p in model.named_parameters():
        if name.endswith("bias") or ".ln_" in name:
            p.add_(torch.randn_like(p) * 0.1)
names = [n for n, _ in model.named_parameters()]  # lm_head.weight is wte's: listed once
assert "lm_head.weight" not in names
params = dict(model.named_parameters())
init = {n: p.detach().clone() for n, p in params.items()}

B, T = train["batch_size"], train["seq_len"]
# One batch, reused every step as llm.c's test_gpt2 does (the loss then falls visibly).
data = torch.randint(0, config["vocab_size"], (B, T + 1))
x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

# nanoGPT's configure_optimizers (non-fused, non-foreach: the plain per-tensor loop).
decay = [p for p in params.values() if p.dim() >= 2]
nodecay = [p for p in params.values() if p.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": train["weight_decay"]}, {"params": nodecay, "weight_decay": 0.0}],
    lr=train["learning_rate"],
    betas=(train["beta1"], train["beta2"]),
    eps=train["eps"],
    foreach=False,
    fused=False,
)

tensors = {}
losses, norms, lrs = [], [], []
for it in range(train["steps"]):
    lr = get_lr(it)
    for g in opt.param_groups:
        g["lr"] = lr
    loss = model(x, y)
    loss.backward()
    if it == 0:
        for n, p in params.items():
            tensors["grad." + n] = p.grad.detach().clone()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    norms.append(norm.item())
    lrs.append(lr)
    print(f"step {it}: lr {lr:.6g} loss {loss.item():.6f} grad norm {norm.item():.4f}")

for n, p in params.items():
    tensors["init." + n] = init[n]
    tensors["final." + n] = p.detach().clone()
    st = opt.state[p]
    tensors["exp_avg." + n] = st["exp_avg"].detach().clone()
    tensors["exp_avg_sq." + n] = st["exp_avg_sq"].detach().clone()
save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "reference.safetensors"))
ref = {
    "config": config,
    "train": train,
    "x": x.tolist(),
    "y": y.tolist(),
    "lrs": lrs,
    "losses": losses,
    "grad_norms": norms,
    "param_names": names,
    "torch_version": torch.__version__,
    "notes": "nanoGPT's model (erf GELU, biases, tied lm_head, no dropout), float32 on CPU, 1 thread. "
    "Step it: lr = get_lr(it); loss = mean cross-entropy of (x, y); backward; "
    "grad_norms[it] = clip_grad_norm_(params, grad_clip) (the norm before clipping); AdamW step. "
    "grad.* are the gradients of step 0 (before clipping).",
}
(out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
print("wrote", out)
