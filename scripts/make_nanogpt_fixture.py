"""Writes tests/fixtures/nanogpt: checkpoints in nanoGPT's ckpt.pt layout, as train.py saves them,
for a tiny char-level model (vocab 65), and what PyTorch computes from them. tests/nanogpt.rs
imports them into pipe and compares. The fixture is committed, so that test needs no Python.

    python3 -m pip install torch safetensors
    python3 scripts/make_nanogpt_fixture.py

Files:
- out-tiny/ckpt.pt: {model, optimizer, model_args, iter_num, best_val_loss, config} after 3
  iterations of train.py's loop (get_lr, clip 1.0, AdamW with configure_optimizers' groups). The
  model's keys carry torch.compile's `_orig_mod.` prefix, and the causal mask is saved as the
  `attn.bias` buffer (nanoGPT without flash attention); best_val_loss is a 0-d tensor, as
  estimate_loss returns it.
- bf16.pt: the same weights in bfloat16, no prefix, no optimizer (weights only).
- no_model.pt, bad_shape.pt (model_args say vocab 64, the tensors 65), int64.pt (an int64 weight):
  inputs pipe must refuse with a clear error.
- reference.json: model_args, the train config, logits of `idx` for ckpt.pt's and bf16.pt's
  weights, and the 4th iteration: its batch, lr and loss.
- reference.safetensors: AdamW's exp_avg.<name> / exp_avg_sq.<name> as saved, and next.<name>, the
  weights after the 4th iteration (nanoGPT's state-dict names, lm_head.weight left out: tied).
"""
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nanogpt_model import GPT, configure_optimizers, get_lr, train_step  # noqa: E402

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "nanogpt"
(out / "out-tiny").mkdir(parents=True, exist_ok=True)
torch.manual_seed(1337)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

model_args = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, bias=True, vocab_size=65, dropout=0.0)
# train.py's globals as its `config` dict holds them (defaults, then a config file's values).
config = dict(
    out_dir="out-tiny", eval_interval=3, log_interval=1, eval_iters=2, eval_only=False,
    always_save_checkpoint=True, init_from="scratch", wandb_log=False, wandb_project="owt",
    wandb_run_name="gpt2", dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=4,
    block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True, learning_rate=1e-3,
    max_iters=10, weight_decay=1e-1, beta1=0.9, beta2=0.99, grad_clip=1.0, decay_lr=True,
    warmup_iters=2, lr_decay_iters=10, min_lr=1e-4, backend="gloo", device="cpu", dtype="float32",
    compile=True,
)

model = GPT(dict(model_args, mask_buffer=True))
opt = configure_optimizers(model, config)
B, T = config["batch_size"], config["block_size"]


def batch():
    d = torch.randint(0, model_args["vocab_size"], (B, T + 1))
    return d[:, :-1].contiguous(), d[:, 1:].contiguous()


iter_num = 3
for it in range(iter_num):
    x, y = batch()
    print(f"iter {it}: loss {train_step(model, opt, x, y, get_lr(it, config), config['grad_clip']):.5f}")

state = model.state_dict()
assert "lm_head.weight" in state and "transformer.h.0.attn.bias" in state
ckpt = {
    "model": {"_orig_mod." + k: v for k, v in state.items()},
    "optimizer": opt.state_dict(),
    "model_args": model_args,
    "iter_num": iter_num,
    "best_val_loss": torch.tensor(4.125),
    "config": config,
}
torch.save(ckpt, out / "out-tiny" / "ckpt.pt")

names = [n for n, _ in model.named_parameters()]
params = dict(model.named_parameters())
tensors = {}
for n, p in params.items():
    st = opt.state[p]
    tensors["exp_avg." + n] = st["exp_avg"].detach().clone()
    tensors["exp_avg_sq." + n] = st["exp_avg_sq"].detach().clone()
adam_step = int(opt.state[params[names[0]]]["step"].item())

idx = torch.randint(0, model_args["vocab_size"], (2, 8))
with torch.no_grad():
    logits = model(idx)
weights = {k: v for k, v in state.items() if not k.endswith(".attn.bias")}
bf16 = {k: v.to(torch.bfloat16) for k, v in weights.items()}
torch.save({"model": bf16, "model_args": model_args, "iter_num": 0, "best_val_loss": 1e9, "config": config}, out / "bf16.pt")
m16 = GPT(model_args)
m16.load_state_dict({k: v.float() for k, v in bf16.items()}, strict=False)
with torch.no_grad():
    logits16 = m16(idx)

torch.save({"model_args": model_args, "iter_num": 0}, out / "no_model.pt")
torch.save({"model": weights, "model_args": dict(model_args, vocab_size=64)}, out / "bad_shape.pt")
ints = dict(weights)
ints["transformer.ln_f.weight"] = torch.ones(16, dtype=torch.int64)
torch.save({"model": ints, "model_args": model_args}, out / "int64.pt")

# The 4th iteration, as `train.py --init_from=resume` takes it.
x, y = batch()
lr = get_lr(iter_num, config)
loss = train_step(model, opt, x, y, lr, config["grad_clip"])
for n, p in params.items():
    tensors["next." + n] = p.detach().clone()
save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "reference.safetensors"))
ref = {
    "model_args": model_args,
    "config": config,
    "iter_num": iter_num,
    "adam_step": adam_step,
    "best_val_loss": 4.125,
    "param_names": names,
    "idx": idx.tolist(),
    "logits": logits.flatten().tolist(),
    "bf16_logits": logits16.flatten().tolist(),
    "next": {"x": x.tolist(), "y": y.tolist(), "lr": lr, "loss": loss},
    "torch_version": torch.__version__,
}
(out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
print(f"wrote {out} (torch {torch.__version__})")
