"""PyTorch reference timings for `pipe bench`, on the same configurations and machine: nanoGPT's
model (model.py, condensed: same modules and init) trained with AdamW on random batches, eager and
under torch.compile (inductor, which needs a C++ compiler on CPU; its compilation happens in the
warm-up iterations, which are not timed).

    python3 -m pip install torch
    python3 scripts/bench_pytorch.py            # config S on 1 and 2 threads, config M on 2; eager, then
                                                # compiled; then sampling as sample.py does (eager)
    python3 scripts/bench_pytorch.py --eager    # eager only
    python3 scripts/bench_pytorch.py --cuda     # the GPU table of `pipe bench --device cuda`
    python3 scripts/bench_pytorch.py --ddp      # config S, global batch 2 x 6, as nanoGPT's DDP: one
    torchrun --standalone --nproc_per_node 2 scripts/bench_pytorch.py --ddp   # process, or 2 (gloo)
    torchrun --standalone --nproc_per_node N scripts/bench_pytorch.py --ddp --cuda  # N GPUs (NCCL)
"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h, dropout, bias=False, gelu="none"):
        super().__init__()
        self.h, self.dropout, self.gelu = h, dropout, gelu
        self.ln_1, self.ln_2 = nn.LayerNorm(c, bias=bias), nn.LayerNorm(c, bias=bias)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(c, 4 * c, bias=bias), nn.Linear(4 * c, c, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        x = x + self.drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.gelu)))


class GPT(nn.Module):
    def __init__(self, L, H, C, T, V, dropout, bias=False, gelu="none"):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, H, dropout, bias, gelu) for _ in range(L))
        self.ln_f, self.drop = nn.LayerNorm(C, bias=bias), nn.Dropout(dropout)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight
        for n, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if n.endswith("proj.weight") else 0.02)

    def forward(self, idx, targets):
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def last_logits(self, idx):
        """nanoGPT's inference forward: the logits of the last position only."""
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x)[:, [-1], :])


@torch.no_grad()
def bench_sampling(name, new_tokens, threads=1, temperature=0.8, top_k=200):
    """nanoGPT's model.generate as sample.py runs it (no KV cache: the context cropped to
    block_size, one full forward per token, temperature, top-k, multinomial) on config S."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(4, 4, 128, 64, 65, 0.0).eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        logits = model.last_logits(idx[:, -64:])[:, -1, :] / temperature
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
        idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
    seconds = time.perf_counter() - t0
    print(f"{name:<32} {threads:>8} {new_tokens:>12} {new_tokens / seconds:>14.0f}", flush=True)


def adamw(model, **kw):
    """nanoGPT's configure_optimizers: weight decay on the 2-D tensors only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                             lr=kw.pop("lr", 1e-3), betas=(0.9, 0.99), **kw)


def step_and_clear(model, opt):
    """Clip to norm 1, AdamW step, drop the gradients."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def median_ms(times):
    times.sort()
    return times[len(times) // 2]


def bench(name, L, H, C, T, B, dropout, threads, iters, warmup=3, compiled=False):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(L, H, C, T, 65, dropout)
    step = torch.compile(model) if compiled else model
    opt = adamw(model)
    times = []
    for i in range(warmup + iters):
        x, y = torch.randint(65, (B, T)), torch.randint(65, (B, T))
        t0 = time.perf_counter()
        loss = step(x, y)
        loss.backward()
        step_and_clear(model, opt)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = median_ms(times)
    print(f"{name:<32} {threads:>8} {ms:>12.1f} {B * T / ms * 1e3:>14.0f}", flush=True)


def bench_cuda(name, L, H, C, T, B, V, dropout, bias, gelu, mode, iters=20, warmup=3):
    """Mean ms/iter on the GPU: f32, tf32 (TF32 matmuls) or bf16 (autocast, as nanoGPT)."""
    torch.backends.cuda.matmul.allow_tf32 = mode != "f32"
    torch.backends.cudnn.allow_tf32 = mode != "f32"
    torch.manual_seed(0)
    model = GPT(L, H, C, T, V, dropout, bias, gelu).cuda()
    opt = adamw(model, lr=1e-4, fused=True)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if mode == "bf16" else torch.autocast("cuda", enabled=False)
    for i in range(warmup + iters):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = torch.randint(V, (B, T), device="cuda"), torch.randint(V, (B, T), device="cuda")
        with ctx:
            loss = model(x, y)
        loss.backward()
        step_and_clear(model, opt)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    print(f"{name:<32} {mode:>8} {ms:>12.2f} {B * T / ms * 1e3:>14.0f}", flush=True)
    del model, opt
    torch.cuda.empty_cache()


def bench_ddp(iters=200, warmup=5, micro_steps=2, B=6, cuda=False):
    """Config S as nanoGPT's train.py runs it under torchrun on CPU: DDP over gloo, each rank
    computing micro_steps / world of the global batch's micro-steps (no_sync until the last), the
    machine's cores shared among the ranks. Prints rank 0's median ms per global step.
    With cuda: nanoGPT's shakespeare_char GPU config (6 layers, 384 dims, block 256, batch 64,
    8 micro-steps, TF32), one GPU per rank (LOCAL_RANK), DDP over NCCL."""
    import os
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    threads = max(os.cpu_count() // world, 1)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        model, T = GPT(6, 6, 384, 256, 65, 0.2).to(device), 256
    else:
        device, model, T = "cpu", GPT(4, 4, 128, 64, 65, 0.0), 64
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        step = DDP(model)
    else:
        step = model
    opt = adamw(model)
    mine = micro_steps // world
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        for micro in range(mine):
            x, y = torch.randint(65, (B, T), device=device), torch.randint(65, (B, T), device=device)
            if world > 1:
                step.require_backward_grad_sync = micro == mine - 1
            loss = step(x, y) / micro_steps
            loss.backward()
        step_and_clear(model, opt)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    ms = median_ms(times)
    if rank == 0:
        label = f"{world} rank{'s' * (world > 1)} x {threads} thread{'s' * (threads > 1)}"
        backend = "DDP (nccl)" if cuda else "DDP (gloo)"
        print(f"PyTorch {torch.__version__} eager, {backend if world > 1 else 'one process'}: "
              f"{label:<22} {micro_steps * B * T / ms * 1e3:>8.0f} tokens/s ({ms:.1f} ms/iter)", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    if "--ddp" in sys.argv and "--cuda" in sys.argv:
        bench_ddp(iters=50, micro_steps=8, B=64, cuda=True)
        sys.exit(0)
    if "--ddp" in sys.argv:
        bench_ddp()
        sys.exit(0)
    if "--cuda" in sys.argv:
        print(f"PyTorch {torch.__version__} eager on {torch.cuda.get_device_name()}")
        print(f"{'training on cuda':<32} {'matmul':>8} {'ms/iter':>12} {'tokens/s':>14}")
        for name, cfg in [("S (4L 4H 128d, T=64, B=12)", (4, 4, 128, 64, 12, 65, 0.0, False, "none")),
                          ("M (6L 6H 384d, T=256, B=64)", (6, 6, 384, 256, 64, 65, 0.2, False, "none")),
                          ("GPT-2 124M (T=1024, B=12)", (12, 12, 768, 1024, 12, 50304, 0.0, True, "tanh"))]:
            for mode in ("f32", "tf32", "bf16"):
                bench_cuda(name, *cfg, mode)
        sys.exit(0)
    quick = "--quick" in sys.argv
    for compiled in (False, True) if "--eager" not in sys.argv else (False,):
        print(f"PyTorch {torch.__version__} {'torch.compile (inductor)' if compiled else 'eager'}")
        print(f"{'training':<32} {'threads':>8} {'ms/iter':>12} {'tokens/s':>14}")
        for t in (1, 2):
            bench("S (4L 4H 128d, T=64, B=12)", 4, 4, 128, 64, 12, 0.0, t, 10 if quick else 30,
                  warmup=5 if compiled else 3, compiled=compiled)
        bench("M (6L 6H 384d, T=256, B=64)", 6, 6, 384, 256, 64, 0.2, 2, 2 if quick else 5,
              warmup=3 if compiled else 1, compiled=compiled)
    print(f"PyTorch {torch.__version__} eager, nanoGPT's generate (sample.py)")
    print(f"{'sampling (1 sample)':<32} {'threads':>8} {'new tokens':>12} {'tokens/s':>14}")
    bench_sampling("S, within block_size", 63)
    bench_sampling("S, 500 tokens (crops context)", 500)
