#!/usr/bin/env bash
# Fine-tuning speed: `kiln train` against the Hugging Face Trainer on PyTorch, side by side on
# this machine. Both fine-tune all-MiniLM-L6-v2 (scripts/setup-pretrained.sh) fully, for one
# epoch over the same number of real mails from data/spam.csv (scripts/setup-text-data.sh):
# batch 32, AdamW, lr 1e-4 with linear decay, clipping at 1.0, fp32, 2 threads, texts cut at
# 128 tokens, each batch padded to its longest text. Alternates the two ROUNDS times (default 2)
# and prints the median training throughput (samples/s of the optimizer steps: loading,
# tokenising and evaluation excluded on both sides) and each side's peak RSS.
#
# Needs the PyTorch venv of scripts/bench-vs-torch.sh plus transformers and accelerate
# (`.venv-torchref/bin/pip install sentence-transformers accelerate`).
# Usage: scripts/bench-finetune.sh   (ROWS=1280 ROUNDS=2 by default; KILN=binary skips the build)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TORCHREF_VENV:-.venv-torchref}
python="$(cd "$venv/bin" && pwd)/python"
rows=${ROWS:-1280}
rounds=${ROUNDS:-2}
model=data/pretrained/all-MiniLM-L6-v2
[ -f "$model/model.safetensors" ] || { echo "no $model: run scripts/setup-pretrained.sh" >&2; exit 1; }
[ -f data/spam.csv ] || { echo "no data/spam.csv: run scripts/setup-text-data.sh" >&2; exit 1; }
"$python" -c "import transformers, accelerate" 2>/dev/null \
  || { echo "transformers/accelerate missing: $venv/bin/pip install sentence-transformers accelerate" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# kiln trains on its split's training part: give it 5% validation and 5% test more rows, so
# both sides train on `rows` mails.
python3 - "$work" "$rows" <<'PY'
import csv, random, sys
work, rows = sys.argv[1], int(sys.argv[2])
csv.field_size_limit(1 << 30)
data = list(csv.DictReader(open("data/spam.csv", encoding="utf-8")))
random.Random(42).shuffle(data)  # the file lists ham first
total = round(rows / 0.9)
for name, part in [("kiln", data[:total]), ("hf", data[:rows])]:
    with open(f"{work}/{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([r["text"], r["label"]] for r in part)
PY
cat > "$work/kiln.toml" <<EOF
seed = 42
[data]
source = "$work/kiln.csv"
target = "label"
[data.split]
method = "stratified"
validation = 0.05
test = 0.05
[[features]]
name = "text"
type = "text"
[model]
type = "transformer"
pretrained = "$(realpath "$model")"
context = 128
[trainer]
epochs = 1
batch_size = 32
lr = 1e-4
warmup_steps = 4
log_every_steps = 1
[output]
dir = "$work/runs"
EOF
cat > "$work/hf.py" <<'PY'
import csv, sys, time
import torch
torch.set_num_threads(2)
from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, Trainer, TrainingArguments)
model_dir, data, out = sys.argv[1:4]
csv.field_size_limit(1 << 30)
rows = list(csv.DictReader(open(data, encoding="utf-8")))
tok = AutoTokenizer.from_pretrained(model_dir)
enc = tok([r["text"] for r in rows], truncation=True, max_length=128)
labels = sorted({r["label"] for r in rows})
ds = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
       "token_type_ids": enc["token_type_ids"][i], "labels": labels.index(r["label"])}
      for i, r in enumerate(rows)]
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, num_train_epochs=1,
                         learning_rate=1e-4, lr_scheduler_type="linear", warmup_steps=4,
                         weight_decay=0.01, max_grad_norm=1.0, logging_strategy="no",
                         save_strategy="no", eval_strategy="no", report_to=[],
                         dataloader_num_workers=0, use_cpu=True, seed=42)
trainer = Trainer(model=model, args=args, train_dataset=ds,
                  data_collator=DataCollatorWithPadding(tok))
m = trainer.train().metrics
print(f"{m['train_samples_per_second']:.3f}")
PY
if [ -z "${KILN:-}" ]; then
  cargo build --release -p kiln-cli >&2
  KILN=target/release/kiln
fi
kiln=$(realpath "$KILN")
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
rss() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }
for round in $(seq "$rounds"); do
  rm -rf "$work/runs"
  /usr/bin/time -v "$kiln" train "$work/kiln.toml" --quiet --json \
    > "$work/kiln-$round.json" 2> "$work/kiln-$round.time"
  # Training samples over the steps' own time (each step record covers one step).
  python3 - "$work/runs" "$work/kiln-$round.json" > "$work/kiln-$round.sps" <<'PY'
import glob, json, sys
steps = [json.loads(l) for f in glob.glob(f"{sys.argv[1]}/*/metrics.jsonl") for l in open(f)]
steps = [s for s in steps if s["kind"] == "step"]
rows = json.load(open(sys.argv[2]))["rows"]["train"]
sizes = [32] * (len(steps) - 1) + [rows - 32 * (len(steps) - 1)]
print(f"{rows / sum(n / s['samples_per_sec'] for n, s in zip(sizes, steps)):.3f}")
PY
  /usr/bin/time -v "$python" "$work/hf.py" "$model" "$work/hf.csv" "$work/hf-out" \
    > "$work/hf-$round.sps" 2> "$work/hf-$round.time"
  echo "round $round: kiln $(cat "$work/kiln-$round.sps") samples/s ($(rss "$work/kiln-$round.time") kB)," \
    "HF Trainer $(tail -1 "$work/hf-$round.sps") samples/s ($(rss "$work/hf-$round.time") kB)" >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$work" "$rounds" "$rows" <<'PY'
import re, statistics, sys
work, rounds, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def median(side, what):
    if what == "sps":
        vals = [float(open(f"{work}/{side}-{r}.sps").read().split()[-1]) for r in range(1, rounds + 1)]
    else:
        vals = [int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                              open(f"{work}/{side}-{r}.time").read()).group(1)) / 1e6
                for r in range(1, rounds + 1)]
    return statistics.median(vals)
k, h = median("kiln", "sps"), median("hf", "sps")
print(f"| MiniLM-L6 full fine-tuning, {rows} spam mails, context 128, batch 32 | "
      f"{k:.1f} | {h:.1f} | **{k / h:.2f}x** | {median('kiln', 'rss'):.2f} | {median('hf', 'rss'):.2f} |")
PY
