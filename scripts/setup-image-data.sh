#!/usr/bin/env bash
# Writes the image-folder data sets the image examples and benchmarks use (ROOT/<class>/*.png):
#   data/images/fashion/{train,test}  Fashion-MNIST as 28x28 grey PNGs (60 000 + 10 000); needs
#                                     scripts/setup-data.sh (apt-get install dataset-fashion-mnist)
#   data/images/emoji                 Google's Noto emoji as 64x64 colour PNGs (1 906 images,
#                                     9 categories: the emoji.json "category" of each base
#                                     emoji; "Component" has 5 and is left out), from the npm
#                                     package emoji-datasource-google@16.0.0 (74 MB, Apache-2.0
#                                     images); needs npm.
# Usage: scripts/setup-image-data.sh [ROOT]   (default data/images). Safe to run more than once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${1:-data/images}"
mkdir -p "$root"

if [ -d "$root/fashion/test" ]; then
    echo "fashion: already in $root/fashion"
else
    python3 "$here/make-image-folder.py" --out "$root/fashion/train.tmp" --split train
    python3 "$here/make-image-folder.py" --out "$root/fashion/test.tmp" --split t10k
    mv "$root/fashion/train.tmp" "$root/fashion/train"
    mv "$root/fashion/test.tmp" "$root/fashion/test"
fi

if [ -d "$root/emoji" ]; then
    echo "emoji: already in $root/emoji"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent emoji-datasource-google@16.0.0 > /dev/null && tar xzf emoji-datasource-google-16.0.0.tgz)
    python3 - "$work/package" "$root/emoji.tmp" <<'EOF'
import json, os, re, shutil, sys
package, out = sys.argv[1], sys.argv[2]
emoji = json.load(open(os.path.join(package, "emoji.json")))
count = 0
for e in emoji:
    if not e.get("has_img_google") or e["category"] == "Component":
        continue
    cls = re.sub(r"[^a-z]+", "-", e["category"].lower()).strip("-")
    os.makedirs(os.path.join(out, cls), exist_ok=True)
    shutil.copy(os.path.join(package, "img/google/64", e["image"]), os.path.join(out, cls, e["image"]))
    count += 1
print(f"emoji: {count} images in {len(os.listdir(out))} class folders")
EOF
    mv "$root/emoji.tmp" "$root/emoji"
fi
