"""PyTorch's side of kiln's LV workload: W2's training step (the shared reference's GPT,
AdamW 3e-4, weight decay 0.1) in nanoGPT's CPU "baby" shape (4 layers, 4 heads, 128 wide,
context 64, batch 12, tied head, no bias, no dropout) over a 4 616-symbol vocabulary, the
People's Daily characters. Uses ../shared/bench/torch_reference.py's model and timing, and
prints the same `RESULT <engine> LV <tokens/s> tokens/s` lines.

Usage: python torch-large-vocab.py PATH/TO/torch_reference.py [--engines eager,compile]
"""
import argparse
import importlib.util
import sys

ap = argparse.ArgumentParser()
ap.add_argument("reference")
ap.add_argument("--engines", default="eager,compile")
a = ap.parse_args()
spec = importlib.util.spec_from_file_location("torch_reference", a.reference)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
torch = ref.torch
torch.set_num_threads(ref.THREADS)

c = ref.GPTConfig
c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd = 4616, 64, 4, 4, 128
batch, warmup, steps = 12, 3, 20
for e in a.engines.split(","):
    engine = {"eager": "torch-eager", "compile": "torch-compile"}[e]
    torch.manual_seed(ref.SEED)
    model = ref.GPT(attn="sdpa")
    ref.info(engine, "LV", f"params={ref.n_params(model)} vocab={c.vocab_size}")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    data = torch.randint(0, c.vocab_size, (batch, c.block_size + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    dt = ref.train_bench(engine, model, opt, x, y, ref.gpt_loss, warmup, steps, "LV")
    ref.result(engine, "LV", batch * c.block_size * steps / dt, "tokens/s")
    if engine == "torch-compile":
        torch._dynamo.reset()
