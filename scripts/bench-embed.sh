#!/usr/bin/env bash
# `kiln embed` against sentence-transformers on PyTorch, side by side on this machine: sentence
# embeddings of all-MiniLM-L6-v2 (scripts/setup-pretrained.sh), batch 64, 2 threads, for two
# sets of real texts from data/spam.csv (scripts/setup-text-data.sh): the first 2,000 mails'
# subject lines (short) and the first 500 whole mails (long: most are cut at the model's 256
# tokens). Alternates the two engines ROUNDS times (default 3) and prints the medians
# (texts/s, encoding only: loading the model and reading the file excluded on both sides) and
# their ratio; also checks the two agree (max abs difference of the embeddings).
#
# Needs the PyTorch venv of scripts/bench-vs-torch.sh plus sentence-transformers
# (`.venv-torchref/bin/pip install sentence-transformers`).
# Usage: scripts/bench-embed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TORCHREF_VENV:-.venv-torchref}
python="$(cd "$venv/bin" && pwd)/python"
rounds=${ROUNDS:-3}
model=data/pretrained/all-MiniLM-L6-v2
[ -f "$model/model.safetensors" ] || { echo "no $model: run scripts/setup-pretrained.sh" >&2; exit 1; }
[ -f data/spam.csv ] || { echo "no data/spam.csv: run scripts/setup-text-data.sh" >&2; exit 1; }
"$python" -c "import sentence_transformers" 2>/dev/null \
  || { echo "sentence-transformers missing: $venv/bin/pip install sentence-transformers" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import csv, sys
rows = list(csv.DictReader(open("data/spam.csv", encoding="utf-8")))
def write(name, texts):
    with open(f"{sys.argv[1]}/{name}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in texts)
write("short", [r["text"].split("\n", 1)[0] for r in rows[:2000]])
write("long", [r["text"] for r in rows[:500]])
PY
cargo build --release -p kiln-cli >&2
kiln=$(realpath target/release/kiln)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$rounds"); do
  for set in short long; do
    echo "== round $round/$rounds: $set" >&2
    "$kiln" embed "$model" --data "$work/$set.csv" --column text --out "$work/kiln-$set.npy" \
        --batch-size 64 --json | python3 -c "import json,sys; print('kiln $set', json.load(sys.stdin)['sentences_per_second'])" >> "$work/rates"
    HF_HUB_OFFLINE=1 "$python" - "$model" "$work/$set.csv" "$work/st-$set.npy" "$set" <<'PY' >> "$work/rates"
import csv, sys, time
import numpy as np, torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(2)
model = SentenceTransformer(sys.argv[1], device="cpu")
texts = [r["text"] for r in csv.DictReader(open(sys.argv[2], encoding="utf-8"))]
model.encode(texts[:64], batch_size=64)  # warm-up
start = time.perf_counter()
emb = model.encode(texts, batch_size=64, convert_to_numpy=True)
print(f"sentence-transformers {sys.argv[4]}", len(texts) / (time.perf_counter() - start))
np.save(sys.argv[3], emb)
PY
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$python" - "$work" <<'PY'
import statistics, sys
import numpy as np
rates = {}
for line in open(f"{sys.argv[1]}/rates"):
    engine, workload, value = line.split()
    rates.setdefault((engine, workload), []).append(float(value))
for w in ["short", "long"]:
    k, s = statistics.median(rates[("kiln", w)]), statistics.median(rates[("sentence-transformers", w)])
    diff = np.abs(np.load(f"{sys.argv[1]}/kiln-{w}.npy") - np.load(f"{sys.argv[1]}/st-{w}.npy")).max()
    print(f"{w}: kiln {k:.1f} texts/s, sentence-transformers {s:.1f} texts/s: {k / s:.2f}x "
          f"(medians of {len(rates[('kiln', w)])}); max abs difference {diff:.1e}")
PY
