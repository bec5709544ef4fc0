#!/usr/bin/env bash
# Distillation on Fashion-MNIST: the CNN of examples/fashion_cnn.toml teaches the MLP of
# examples/fashion_mlp_distilled.toml; the same MLP is trained without a teacher (the config
# less its [distill] table) with the same seed and epochs. Seeds 42, 1 and 2 (SEEDS=...), each
# its own split, initialisation and dropout masks; the teacher is trained once (seed 42).
# Prints validation and test accuracy of both students per seed and the mean gain.
# Needs scripts/setup-data.sh (Fashion-MNIST) and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${KILN:-target/release/kiln}
OUT=${OUT:-runs/distill-fashion}
SEEDS=${SEEDS:-"42 1 2"}
mkdir -p "$OUT"
sed '/^\[distill\]/,/^$/d' examples/fashion_mlp_distilled.toml > "$OUT/mlp.toml"
[ -f "$OUT/cnn/model.safetensors" ] || "$KILN" train examples/fashion_cnn.toml --quiet \
    --set "output.dir=\"$OUT\"" --set 'output.name="cnn"' > /dev/null
for seed in $SEEDS; do
  "$KILN" train "$OUT/mlp.toml" --quiet --json --set seed="$seed" \
      --set "output.dir=\"$OUT\"" --set "output.name=\"mlp-s$seed\"" > "$OUT/mlp-s$seed.json"
  "$KILN" train examples/fashion_mlp_distilled.toml --quiet --json --set seed="$seed" \
      --set "distill.teacher=\"$OUT/cnn\"" \
      --set "output.dir=\"$OUT\"" --set "output.name=\"distilled-s$seed\"" > "$OUT/distilled-s$seed.json"
done
python3 - "$OUT" $SEEDS <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
teacher = json.load(open(f"{out}/cnn/report.json"))["test"]["metrics"]["accuracy"]
print(f"teacher (CNN) test accuracy {teacher:.4f}")
gains = []
for s in seeds:
    a = json.load(open(f"{out}/mlp-s{s}.json"))
    b = json.load(open(f"{out}/distilled-s{s}.json"))
    gain = b["test"]["accuracy"] - a["test"]["accuracy"]
    gains.append(gain)
    print(f"seed {s}: MLP alone val {a['validation']['accuracy']:.4f} test {a['test']['accuracy']:.4f}"
          f" | distilled val {b['validation']['accuracy']:.4f} test {b['test']['accuracy']:.4f}"
          f" | gain {100 * gain:+.2f} points ({a['train_seconds']:.0f} s, {b['train_seconds']:.0f} s)")
print(f"mean gain {100 * sum(gains) / len(gains):+.2f} points, "
      f"from {100 * min(gains):+.2f} to {100 * max(gains):+.2f}")
PY
