#!/usr/bin/env python3
"""PyTorch eager training speed of a GPT shaped like kiln's (pre-LayerNorm blocks, GELU MLP,
tied head, no dropout) on one CUDA GPU: the reference side of scripts/device-check.sh.

Random tokens (speed does not depend on the text), AdamW (fused where torch has it), f32 or
bf16 autocast with f32 master weights. Prints one JSON line: tokens/s, the model's parameters
and the FLOPs per token (6N + 12·L·T·d, as nanoGPT's MFU counts them).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, context, layers, heads, d):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln(x) @ self.tok.weight.t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(1)
    # f32 means f32: no TF32 tensor cores behind the user's back.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = Gpt(a.vocab, a.context, a.layers, a.heads, a.embd).to(dev)
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4)
    x = torch.randint(a.vocab, (a.batch, a.context), device=dev)
    y = torch.randint(a.vocab, (a.batch, a.context), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * params + 12 * a.layers * a.context * a.embd
    print(json.dumps({
        "engine": "torch-eager",
        "dtype": a.dtype,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "tokens_per_s": a.steps * a.batch * a.context / seconds,
        "parameters": params,
        "flops_per_token": flops_per_token,
        "final_loss": float(loss),
        "loss_is_finite": math.isfinite(float(loss)),
    }))


if __name__ == "__main__":
    main()
