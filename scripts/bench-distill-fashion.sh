#!/usr/bin/env bash
# Distillation on Fashion-MNIST: the CNNs of examples/fashion_cnn.toml (seeds TEACHER_SEEDS,
# one split: data.split.seed = 42; several make an ensemble whose probabilities are averaged)
# teach the MLP of examples/fashion_mlp_distilled.toml; the same MLP is trained without a
# teacher (the config less its [distill] table) with the same seed and epochs. Student seeds
# 42, 1 and 2 (SEEDS=...), each its own split, initialisation and dropout masks.
# Prints validation and test accuracy of both students per seed and the mean gain.
# Needs scripts/setup-data.sh (Fashion-MNIST) and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
OUT=${OUT:-runs/distill-fashion}
SEEDS=${SEEDS:-"42 1 2"}
TEACHER_SEEDS=${TEACHER_SEEDS:-"42 1 2"}
mkdir -p "$OUT"
sed '/^\[distill\]/,/^$/d' examples/fashion_mlp_distilled.toml > "$OUT/mlp.toml"
teachers=()
for t in $TEACHER_SEEDS; do
  [ -f "$OUT/cnn-s$t/model.safetensors" ] || "$KILN" train examples/fashion_cnn.toml --quiet \
      --set seed="$t" --set data.split.seed=42 \
      --set "output.dir=\"$OUT\"" --set "output.name=\"cnn-s$t\"" > /dev/null
  teachers+=("\"$OUT/cnn-s$t\"")
done
list=$(IFS=,; echo "${teachers[*]}")
for seed in $SEEDS; do
  "$KILN" train "$OUT/mlp.toml" --quiet --json --set seed="$seed" \
      --set "output.dir=\"$OUT\"" --set "output.name=\"mlp-s$seed\"" > "$OUT/mlp-s$seed.json"
  "$KILN" train examples/fashion_mlp_distilled.toml --quiet --json --set seed="$seed" \
      --set "distill.teacher=[$list]" \
      --set "output.dir=\"$OUT\"" --set "output.name=\"distilled-s$seed\"" > "$OUT/distilled-s$seed.json"
done
python3 - "$OUT" "$TEACHER_SEEDS" $SEEDS <<'PY'
import json, sys
out, teacher_seeds, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
for t in teacher_seeds:
    r = json.load(open(f"{out}/cnn-s{t}/report.json"))
    print(f"teacher CNN seed {t}: test accuracy {r['test']['metrics']['accuracy']:.4f}")
gains = []
for s in seeds:
    a = json.load(open(f"{out}/mlp-s{s}.json"))
    b = json.load(open(f"{out}/distilled-s{s}.json"))
    gain = b["test"]["accuracy"] - a["test"]["accuracy"]
    gains.append(gain)
    print(f"seed {s}: MLP alone val {a['validation']['accuracy']:.4f} test {a['test']['accuracy']:.4f}"
          f" | distilled val {b['validation']['accuracy']:.4f} test {b['test']['accuracy']:.4f}"
          f" | gain {100 * gain:+.2f} points ({a['train_seconds']:.0f} s, {b['train_seconds']:.0f} s)")
teacher = b["distillation"]["teacher_test"]["accuracy"]
print(f"teacher ({len(teacher_seeds)} CNNs) test accuracy {teacher:.4f}")
print(f"mean gain {100 * sum(gains) / len(gains):+.2f} points, "
      f"from {100 * min(gains):+.2f} to {100 * max(gains):+.2f}")
PY
