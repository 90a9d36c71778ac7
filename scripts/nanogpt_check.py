"""Loads a ckpt.pt as nanoGPT's sample.py and train.py do under PyTorch 2.6+ (torch.load with its
default weights_only=True; `_orig_mod.` stripped; load_state_dict strict; the optimizer from
configure_optimizers, then optimizer.load_state_dict), and prints what tests/nanogpt.rs compares
with pipe, as JSON: the logits of `idx`, the saved progress, and optionally one train.py iteration
(`step`: x, y, lr, grad_clip) with the weights and moments after it.

    python3 scripts/nanogpt_check.py REQUEST.json     # {"ckpt": PATH, "idx": [[...]], "step": {...}}
"""
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from nanogpt_model import GPT, configure_optimizers, train_step  # noqa: E402

req = json.loads(pathlib.Path(sys.argv[1]).read_text())
torch.set_num_threads(1)
ckpt = torch.load(req["ckpt"], map_location="cpu", weights_only=True)
args = ckpt["model_args"]
model = GPT(args)
state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
model.load_state_dict(state, strict=True)
tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
out = {
    "model_args": args,
    "iter_num": ckpt["iter_num"],
    "best_val_loss": float(ckpt["best_val_loss"]),
    "config": ckpt["config"],
    "tied": tied,
    "lm_head_equals_wte": bool(torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])),
}
with torch.no_grad():
    out["logits"] = model(torch.tensor(req["idx"])).flatten().tolist()
if "step" in req:
    s = req["step"]
    opt = configure_optimizers(model, ckpt["config"])
    opt.load_state_dict(ckpt["optimizer"])
    params = dict(model.named_parameters())
    out["adam_step_before"] = float(opt.state[next(iter(params.values()))]["step"])
    out["loss"] = train_step(model, opt, torch.tensor(s["x"]), torch.tensor(s["y"]), s["lr"], s["grad_clip"])
    out["params"] = {n: p.detach().flatten().tolist() for n, p in params.items()}
    out["exp_avg"] = {n: opt.state[p]["exp_avg"].flatten().tolist() for n, p in params.items()}
    out["exp_avg_sq"] = {n: opt.state[p]["exp_avg_sq"].flatten().tolist() for n, p in params.items()}
    out["adam_step_after"] = float(opt.state[next(iter(params.values()))]["step"])
print(json.dumps(out))
