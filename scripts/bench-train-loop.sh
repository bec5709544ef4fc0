#!/usr/bin/env bash
# The real `kiln train` language-model loop against the W2 workload bench, on the same machine
# in the same run: W2's shape (4 layers, 4 heads, 256 wide, context 128, batch 16, no bias, tied
# head, no dropout, AdamW 3e-4 with weight decay 0.1) trained for 50 steps from a token file by
# `kiln train` (random windows from the memory-mapped file, gradient clipping, a cosine schedule
# with warm-up, metrics.jsonl, a final evaluation and checkpoint), its tokens/s read from
# metrics.jsonl's step windows after the first. The corpus is the licence texts of the crates
# in ~/.cargo/registry (English, ~90 symbols: the char tokenizer's vocabulary is close to W2's 65).
#
# Usage: scripts/bench-train-loop.sh   (ROUNDS=3 by default; prints both rates and the overhead)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
find ~/.cargo/registry/src -maxdepth 3 -name 'LICENSE*' -type f -print0 | sort -z \
  | xargs -0 cat | LC_ALL=C tr -cd '\11\12\15\40-\176' > "$work/corpus.txt"
echo "corpus: $(wc -c < "$work/corpus.txt") bytes" >&2
cargo build --release -p kiln-cli >&2
bench=$(cargo bench -p kiln-train --bench workloads --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -1)
kiln=$(realpath target/release/kiln)
for round in $(seq "$rounds"); do
  "$bench" W2 2>/dev/null | sed -n 's/^RESULT kiln W2 \([0-9.]*\).*/W2 \1/p'
  rm -rf "$work/runs"
  (cd "$work" && "$kiln" train --data corpus.txt --set model.type=gpt --set text.tokenizer=char \
      --set model.layers=4 --set model.heads=4 --set model.embd=256 --set model.context=128 \
      --set model.dropout=0.0 --set model.bias=false --set model.tied_head=true \
      --set trainer.max_steps=50 --set trainer.batch_size=16 --set trainer.optimizer=adamw \
      --set trainer.lr=3e-4 --set trainer.weight_decay=0.1 --set trainer.grad_clip_norm=1.0 \
      --set trainer.schedule=cosine --set trainer.warmup_steps=10 --set trainer.log_every_steps=10 \
      --set trainer.eval_every_steps=1000 --set trainer.eval_batches=1 \
      --set output.dir=runs --set output.name=loop --json > /dev/null 2>&1)
  python3 - "$work/runs/loop/metrics.jsonl" <<'PY'
import json, sys
rates = [r["samples_per_sec"] for r in map(json.loads, open(sys.argv[1]))
         if r.get("kind", r.get("type")) in (None, "step") and "samples_per_sec" in r]
print(f"train-loop {sum(rates[1:]) / len(rates[1:]):.1f}")
PY
done > "$work/rates"
python3 - "$work/rates" <<'PY'
import statistics, sys
rates = {}
for line in open(sys.argv[1]):
    name, value = line.split()
    rates.setdefault(name, []).append(float(value))
w2, loop = statistics.median(rates["W2"]), statistics.median(rates["train-loop"])
print(f"W2 bench {w2:.1f} tokens/s, kiln train loop {loop:.1f} tokens/s (medians of {len(rates['W2'])}): "
      f"the loop runs at {100 * loop / w2:.1f}% of the bench, {100 * (w2 / loop - 1):.1f}% overhead")
PY
