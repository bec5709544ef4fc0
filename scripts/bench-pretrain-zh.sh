#!/usr/bin/env bash
# Pretrain, then fine-tune, inside kiln alone, against kiln's from-scratch classifier on the
# same split. A GPT is pretrained (causal language modelling) on People's Daily plus the
# *training* reviews of examples/sentiment_zh.toml's split (`kiln data split`: the validation
# and test reviews never reach it; domain-adaptive pretraining), with a byte-level BPE fitted on
# that text, exported in the GPT-2 layout and fine-tuned (examples/sentiment_zh_gpt.toml) for
# each seed in SEEDS; examples/sentiment_zh.toml trains from scratch with the same epochs and
# seeds; the GPT's network from fresh weights shows what the pretraining gives. All runs share
# the split (data.split.seed = 42). Prints a table of validation and test accuracy.
# Needs scripts/setup-text-data.sh, python3 and a release build (cargo build --release).
# REVIEWS=0 pretrains on People's Daily alone.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
OUT=${OUT:-runs}
STEPS=${STEPS:-4000}
SEEDS=${SEEDS:-42 1 2}
EPOCHS=${EPOCHS:-6}
REVIEWS=${REVIEWS:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
corpus="$OUT/zh-corpus"
rm -rf "$corpus" "$OUT/zh-split"
mkdir -p "$corpus"
cp data/peoples_daily.txt "$corpus/1-peoples-daily.txt"
if [ "$REVIEWS" = 1 ]; then
    "$KILN" data split examples/sentiment_zh.toml --out "$OUT/zh-split"
    python3 - "$OUT/zh-split/train.csv" "$corpus/2-reviews-train.txt" <<'PY'
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f, open(sys.argv[2], "w", encoding="utf-8") as out:
    for row in csv.DictReader(f):
        out.write(" ".join(row["text"].split()) + "\n")
PY
fi
"$KILN" train examples/peoples_daily_bpe.toml --quiet \
    --set "data.source=\"$corpus\"" --set text.vocab_size=8000 \
    --set model.context=128 --set model.bias=true --set "trainer.max_steps=$STEPS" \
    --set "output.dir=\"$OUT\"" --set 'output.name="zh-gpt-pretrained"'
rm -rf "$OUT/zh-gpt-hf"
"$KILN" export "$OUT/zh-gpt-pretrained" --format safetensors --out "$OUT/zh-gpt-hf"
runs=()
for seed in $SEEDS; do
    "$KILN" train examples/sentiment_zh_gpt.toml --quiet --json --set "seed=$seed" \
        --set "trainer.epochs=$EPOCHS" --set "model.pretrained=\"$OUT/zh-gpt-hf\"" \
        --set "output.dir=\"$OUT\"" --set "output.name=\"zh-gpt-tuned-s$seed\"" \
        > "$OUT/zh-gpt-tuned-s$seed.json"
    "$KILN" train examples/sentiment_zh.toml --quiet --json --set "seed=$seed" \
        --set "trainer.epochs=$EPOCHS" --set trainer.keep_best=true \
        --set "output.dir=\"$OUT\"" --set "output.name=\"zh-scratch-s$seed\"" \
        > "$OUT/zh-scratch-s$seed.json"
    runs+=("zh-gpt-tuned-s$seed" "zh-scratch-s$seed")
done
# The GPT's network and tokenizer from fresh weights (the first seed).
first=${SEEDS%% *}
"$KILN" train examples/sentiment_zh_gpt.toml --quiet --json --set "seed=$first" \
    --set "trainer.epochs=$EPOCHS" --set "model.pretrained=\"$OUT/zh-gpt-hf\"" \
    --set model.pretrained_weights=false \
    --set "output.dir=\"$OUT\"" --set "output.name=\"zh-gpt-fresh-s$first\"" \
    > "$OUT/zh-gpt-fresh-s$first.json"
runs+=("zh-gpt-fresh-s$first")
python3 - "$OUT" "${runs[@]}" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'run':<22} {'validation':>10} {'test':>8} {'train s':>8}")
for name in sys.argv[2:]:
    r = json.load(open(f"{out}/{name}.json"))
    print(f"{name:<22} {r['validation']['accuracy']:>10.4f} {r['test']['accuracy']:>8.4f} "
          f"{r['train_seconds']:>8.0f}")
PY
