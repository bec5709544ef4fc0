#!/usr/bin/env bash
# SpamAssassin, all-MiniLM-L6-v2 fine-tuned (examples/spam_minilm.toml) against the transformer
# from scratch (examples/spam.toml) on the same splits: seeds 42, 1 and 2 (SEEDS=...), each its
# own split, initialisation and dropout masks. ARMS names the fine-tuning variants, each
# `name:setting;setting` (--set values; default: the example as it is), e.g.
# ARMS="windows4:text.windows=4 lr5e-5:trainer.lr=5e-5;trainer.epochs=5"; SCRATCH=0 skips the
# from-scratch runs. Prints
# validation and test F1(spam), training time and peak RSS per run, and per arm the mean and
# whether every seed beats from scratch. A run whose JSON exists is not trained again.
# Needs scripts/setup-text-data.sh, scripts/setup-pretrained.sh and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
OUT=${OUT:-runs/bench-spam}
SEEDS=${SEEDS:-"42 1 2"}
SCRATCH=${SCRATCH:-1}
ARMS=${ARMS:-"minilm:"}
mkdir -p "$OUT"
run() { # NAME CONFIG SEED SETTINGS...
  local name=$1 config=$2 seed=$3
  shift 3
  [ -s "$OUT/$name-s$seed.json" ] && return
  local sets=(--set seed="$seed" --set "output.dir=\"$OUT\"" --set "output.name=\"$name-s$seed\"")
  for s in "$@"; do sets+=(--set "$s"); done
  /usr/bin/time -f "%M" -o "$OUT/$name-s$seed.rss" \
    "$KILN" train "$config" --quiet --json "${sets[@]}" > "$OUT/$name-s$seed.tmp"
  mv "$OUT/$name-s$seed.tmp" "$OUT/$name-s$seed.json"
}
names=()
for seed in $SEEDS; do
  for arm in $ARMS; do
    name=${arm%%:*}
    IFS=';' read -r -a sets <<< "${arm#*:}"
    run "$name" examples/spam_minilm.toml "$seed" "${sets[@]}"
  done
  if [ "$SCRATCH" = 1 ]; then run scratch examples/spam.toml "$seed"; fi
done
for arm in $ARMS; do names+=("${arm%%:*}"); done
python3 - "$OUT" "$SCRATCH" "${names[*]}" $SEEDS <<'PY'
import json, os, sys
out, scratch, names, seeds = sys.argv[1], sys.argv[2] == "1", sys.argv[3].split(), sys.argv[4:]
def load(name, s):
    r = json.load(open(f"{out}/{name}-s{s}.json"))
    rss = int(open(f"{out}/{name}-s{s}.rss").read().split()[-1]) / 1024 ** 2
    return r["validation"]["f1"], r["test"]["f1"], r["train_seconds"], rss
arms = (["scratch"] if scratch else []) + names
table = {a: {s: load(a, s) for s in seeds} for a in arms}
for a in arms:
    for s in seeds:
        v, t, secs, rss = table[a][s]
        print(f"{a:>12} seed {s:>2}: validation F1(spam) {v:.4f}  test {t:.4f}  {secs:6.0f} s  {rss:.2f} GB")
for a in arms:
    tests = [table[a][s][1] for s in seeds]
    vals = [table[a][s][0] for s in seeds]
    line = f"{a:>12}: mean test F1(spam) {sum(tests) / len(tests):.4f}, validation {sum(vals) / len(vals):.4f}"
    if scratch and a != "scratch":
        above = all(table[a][s][1] > table["scratch"][s][1] for s in seeds)
        line += f"; every seed above from scratch: {'yes' if above else 'no'}"
    print(line)
PY
