#!/usr/bin/env bash
# Pretrain, then fine-tune, inside kiln alone: a GPT pretrained on People's Daily (byte-level
# BPE, examples/peoples_daily_bpe.toml, context 128; PRETRAIN=examples/peoples_daily_char.toml
# for characters),
# exported in the GPT-2 layout and fine-tuned on the Chinese review sentiment task, against
# the same network trained from scratch on the same split. Prints both test accuracies.
# Needs scripts/setup-text-data.sh and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
OUT=${OUT:-runs}
STEPS=${STEPS:-2000}
PRETRAIN=${PRETRAIN:-examples/peoples_daily_bpe.toml}
"$KILN" train "$PRETRAIN" --quiet \
    --set model.context=128 --set model.bias=true --set "trainer.max_steps=$STEPS" \
    --set "output.dir=\"$OUT\"" --set 'output.name="peoples-daily-gpt-128"'
rm -rf "$OUT/peoples-daily-gpt-hf"
"$KILN" export "$OUT/peoples-daily-gpt-128" --format safetensors --out "$OUT/peoples-daily-gpt-hf"
"$KILN" train examples/sentiment_zh_gpt.toml --quiet --json \
    --set "model.pretrained=\"$OUT/peoples-daily-gpt-hf\"" \
    --set "output.dir=\"$OUT\"" > "$OUT/sentiment-zh-gpt.json"
# The same shape from scratch: the GPT's blocks (4 × 128, 4 heads), its tokenizer, causal.
"$KILN" train examples/sentiment_zh_gpt.toml --quiet --json \
    --set "model.pretrained=\"$OUT/peoples-daily-gpt-hf\"" \
    --set "output.dir=\"$OUT\"" --set 'output.name="sentiment-zh-gpt-scratch"' \
    --set model.pretrained_weights=false > "$OUT/sentiment-zh-gpt-scratch.json"
# The reference: examples/sentiment_zh.toml, kiln's from-scratch text classifier (its own BPE).
"$KILN" train examples/sentiment_zh.toml --quiet --json \
    --set "output.dir=\"$OUT\"" > "$OUT/sentiment-zh.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ["sentiment-zh-gpt", "sentiment-zh-gpt-scratch", "sentiment-zh"]:
    try:
        r = json.load(open(f"{out}/{name}.json"))
        print(f"{name}: validation accuracy {r['validation']['accuracy']:.4f}, "
              f"test accuracy {r['test']['accuracy']:.4f}, {r['train_seconds']:.0f} s")
    except Exception as e:
        print(f"{name}: {e}")
PY
