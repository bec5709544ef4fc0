#!/usr/bin/env bash
# Pretrain, then fine-tune, inside kiln alone, against kiln's from-scratch classifier on the
# same split. A GPT is pretrained (causal language modelling) on People's Daily plus the
# *training* reviews of examples/sentiment_zh.toml's split (`kiln data split`: the validation
# and test rows never reach it; domain-adaptive pretraining; the last 10 % of that text, the
# end of the reviews, is the language model's own validation text), with a byte-level BPE
# fitted on its first 90 %, exported in the GPT-2 layout and fine-tuned
# (examples/sentiment_zh_gpt.toml) for each seed in SEEDS; for each seed too,
# examples/sentiment_zh.toml from scratch with the same epochs, the GPT fine-tuned with its own
# causal attention, and its network and tokenizer from fresh weights (~70 min for 3 seeds).
# All runs share the split (data.split.seed = 42). Prints validation and test accuracy, on all
# held-out reviews and on those whose text is not among the training rows (the review set
# repeats many texts).
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
set -- $SEEDS
: "${1:?SEEDS is empty}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
corpus="$OUT/zh-corpus"
# This script's runs of an earlier call (kiln would give the new ones other names).
rm -rf "$corpus" "$OUT/zh-split" "$OUT"/zh-gpt-pretrained "$OUT"/zh-gpt-tuned-s* \
    "$OUT"/zh-scratch-s* "$OUT"/zh-gpt-causal-s* "$OUT"/zh-gpt-fresh-s*
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
# NAME SETTING...: examples/sentiment_zh_gpt.toml from the pretrained GPT, for $seed.
tune() {
    local name=$1
    shift
    "$KILN" train examples/sentiment_zh_gpt.toml --quiet --json --set "seed=$seed" \
        --set "trainer.epochs=$EPOCHS" --set "model.pretrained=\"$OUT/zh-gpt-hf\"" \
        --set "output.dir=\"$OUT\"" --set "output.name=\"$name-s$seed\"" "$@" \
        > "$OUT/$name-s$seed.json"
    runs+=("$name-s$seed")
}
for seed in $SEEDS; do
    tune zh-gpt-tuned
    "$KILN" train examples/sentiment_zh.toml --quiet --json --set "seed=$seed" \
        --set "trainer.epochs=$EPOCHS" --set trainer.keep_best=true \
        --set "output.dir=\"$OUT\"" --set "output.name=\"zh-scratch-s$seed\"" \
        > "$OUT/zh-scratch-s$seed.json"
    runs+=("zh-scratch-s$seed")
    # The GPT's own causal attention, and its network and tokenizer from fresh weights (what
    # the pretraining gives).
    tune zh-gpt-causal --set model.causal=true
    tune zh-gpt-fresh --set model.pretrained_weights=false
done
# Held-out rows whose review also appears among the training rows are many: accuracy on the
# others ("new" texts) shows what generalises.
"$KILN" data split examples/sentiment_zh.toml --out "$OUT/zh-split" > /dev/null
for run in "${runs[@]}"; do
    for part in validation test; do
        "$KILN" predict "$OUT/$run" --data "$OUT/zh-split/$part.csv" \
            --out "$OUT/$run/predictions-$part.csv" > /dev/null
    done
done
python3 - "$OUT" "${runs[@]}" <<'PY'
import csv, json, sys
out, runs = sys.argv[1], sys.argv[2:]
rows = lambda p: list(csv.DictReader(open(p, newline="", encoding="utf-8")))
norm = lambda t: " ".join(t.split())
seen = {norm(r["text"]) for r in rows(f"{out}/zh-split/train.csv")}
held = {p: rows(f"{out}/zh-split/{p}.csv") for p in ["validation", "test"]}
new = {p: [i for i, r in enumerate(v) if norm(r["text"]) not in seen] for p, v in held.items()}
print("accuracy; 'new': held-out reviews whose text is not among the training rows "
      f"({len(new['validation'])} of {len(held['validation'])} validation, "
      f"{len(new['test'])} of {len(held['test'])} test)")
print(f"{'run':<22} {'validation':>10} {'val new':>8} {'test':>8} {'test new':>8} {'train s':>8}")
for name in runs:
    r = json.load(open(f"{out}/{name}.json"))
    scores = []
    for p in ["validation", "test"]:
        pred = [x["label"] for x in rows(f"{out}/{name}/predictions-{p}.csv")]
        assert len(pred) == len(held[p]), (name, p)
        ok = [a == b["label"] for a, b in zip(pred, held[p])]
        scores += [sum(ok) / len(ok), sum(ok[i] for i in new[p]) / max(len(new[p]), 1)]
    print(f"{name:<22} {scores[0]:>10.4f} {scores[1]:>8.4f} {scores[2]:>8.4f} {scores[3]:>8.4f} "
          f"{r['train_seconds']:>8.0f}")
PY
