#!/usr/bin/env bash
# Image folders: decode time and peak RSS of the 60 000 Fashion-MNIST PNGs, and one training
# epoch of examples/fashion_folder.toml's CNN three ways: the folder with augmentation (its
# batches made on their own thread), the folder without, and the gzip IDX files of the same
# images. Prints samples/s and the loop's data wait from each run's report.json.
# Needs scripts/setup-data.sh and scripts/setup-image-data.sh; KILN=path/to/kiln (release).
set -euo pipefail
KILN="${KILN:-target/release/kiln}"
OUT="${OUT:-$(mktemp -d)}"
EPOCHS="${EPOCHS:-1}"
uptime
/usr/bin/time -f "describe data/images/fashion/train: %e s, peak RSS %M KB" \
    "$KILN" data describe data/images/fashion/train > /dev/null
run() {
    local name="$1"; shift
    /usr/bin/time -f "$name: %e s wall, peak RSS %M KB" \
        "$KILN" train examples/fashion_folder.toml --quiet --json \
        --set output.dir="\"$OUT\"" --set output.name="\"$name\"" \
        --set trainer.epochs=$EPOCHS --set trainer.checkpoint_every_steps=0 "$@" > "$OUT/$name.json"
    python3 - "$OUT/$name.json" "$OUT/$name/metrics.jsonl" "$name" <<'PY'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
epochs = [json.loads(l) for l in open(sys.argv[2]) if '"kind":"epoch"' in l]
rows = summary["rows"]["train"] * len(epochs)
step = sum(e["step_seconds"] for e in epochs)
wait = sum(e["data_wait_seconds"] for e in epochs)
print(f"{sys.argv[3]}: {rows / step:.0f} samples/s over {step:.1f} s of steps; data wait {wait:.2f} s = {100 * wait / step:.2f} %; test accuracy {summary['test']['accuracy']:.4f}")
PY
}
run folder-augmented --set data.augment.flip=true --set data.augment.crop_padding=2
run folder-plain
run idx-plain --set data.source='"/usr/share/datasets/fashion-mnist/train"' \
    --set data.test_source='"/usr/share/datasets/fashion-mnist/t10k"'
