#!/usr/bin/env bash
# kiln against nanoGPT end to end, on this machine in the same run: nanoGPT's CPU "baby" run
# (its README: 4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 iterations, no dropout,
# evaluation every 250 iterations) and kiln's examples/peoples_daily_char.toml (the same shape
# and schedule) on the same character-level corpus, each timed whole (wall seconds, from start
# to the final evaluation and checkpoint). CORPUS=people (default; the People's Daily
# 1998-01 text from scripts/setup-text-data.sh, 4 616 symbols) or CORPUS=licences (the licence
# texts of the crates in ~/.cargo/registry, ~90 symbols: the small-vocabulary case).
#
# Needs a checkout of nanoGPT (https://github.com/karpathy/nanoGPT; it is not vendored here) and
# the PyTorch venv of scripts/bench-vs-torch.sh (torch, numpy):
#   NANOGPT=path/to/nanoGPT scripts/bench-nanogpt.sh     (ROUNDS=1 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
nanogpt=$(realpath "${NANOGPT:?set NANOGPT to a nanoGPT checkout}")
venv=${TORCHREF_VENV:-.venv-torchref}
python="$(cd "$venv/bin" && pwd)/python"
rounds=${ROUNDS:-1}
corpus_kind=${CORPUS:-people}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$corpus_kind" in
  people)
    [ -f data/peoples_daily.txt ] || { echo "no data/peoples_daily.txt: run scripts/setup-text-data.sh" >&2; exit 1; }
    cp data/peoples_daily.txt "$work/corpus.txt" ;;
  licences)
    find ~/.cargo/registry/src -maxdepth 3 -name 'LICENSE*' -type f -print0 | sort -z \
      | xargs -0 cat | LC_ALL=C tr -cd '\11\12\15\40-\176' > "$work/corpus.txt" ;;
  *) echo "CORPUS must be people or licences" >&2; exit 1 ;;
esac
cargo build --release -p kiln-cli >&2
kiln=$(realpath target/release/kiln)
# nanoGPT's data layout (its shakespeare_char prepare step): sorted characters, the first 90%
# for training, uint16 ids, meta.pkl with the vocabulary.
cp -r "$nanogpt" "$work/nanogpt"
mkdir -p "$work/nanogpt/data/corpus_char"
"$python" - "$work/corpus.txt" "$work/nanogpt/data/corpus_char" <<'PY'
import pickle, sys
import numpy as np
text = open(sys.argv[1], encoding="utf-8").read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
n = len(text)
ids = np.array([stoi[c] for c in text], dtype=np.uint16)
ids[: int(n * 0.9)].tofile(f"{sys.argv[2]}/train.bin")
ids[int(n * 0.9):].tofile(f"{sys.argv[2]}/val.bin")
pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi},
            open(f"{sys.argv[2]}/meta.pkl", "wb"))
print(f"corpus: {n} characters, {len(chars)} symbols", file=sys.stderr)
PY
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$rounds"); do
  echo "== round $round/$rounds: nanoGPT" >&2
  start=$(date +%s.%N)
  (cd "$work/nanogpt" && "$python" train.py config/train_shakespeare_char.py --dataset=corpus_char \
      --out_dir="$work/nanogpt-out" --device=cpu --compile=False --eval_iters=20 --log_interval=10 \
      --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 \
      --lr_decay_iters=2000 --dropout=0.0 > "$work/nanogpt.log" 2>&1)
  end=$(date +%s.%N)
  val=$(sed -n 's/^step 2000: .*val loss \([0-9.]*\).*/\1/p' "$work/nanogpt.log")
  echo "nanogpt $(python3 -c "print(f'{$end - $start:.1f}')") $val" >> "$work/times"
  echo "== round $round/$rounds: kiln" >&2
  rm -rf "$work/runs"
  start=$(date +%s.%N)
  "$kiln" train examples/peoples_daily_char.toml --data "$work/corpus.txt" \
      --set output.dir="$work/runs" --json > "$work/kiln.json" 2> "$work/kiln.log"
  end=$(date +%s.%N)
  val=$(python3 -c "import json; print(round(json.load(open('$work/kiln.json'))['evals'][-1]['val_loss'], 4))")
  echo "kiln $(python3 -c "print(f'{$end - $start:.1f}')") $val" >> "$work/times"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$work/times" "$corpus_kind" <<'PY'
import statistics, sys
times = {}
for line in open(sys.argv[1]):
    name, seconds, val = line.split(maxsplit=2)
    times.setdefault(name, []).append((float(seconds), val.strip()))
k = statistics.median(s for s, _ in times["kiln"])
n = statistics.median(s for s, _ in times["nanogpt"])
print(f"{sys.argv[2]}: kiln {k:.1f} s (val loss {times['kiln'][-1][1]}), nanoGPT {n:.1f} s "
      f"(val loss {times['nanogpt'][-1][1]}): kiln takes {k / n:.2f}x nanoGPT's wall time "
      f"(medians of {len(times['kiln'])})")
PY
