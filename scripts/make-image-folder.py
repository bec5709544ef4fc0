#!/usr/bin/env python3
"""Writes Fashion-MNIST (gzip IDX, `apt-get install dataset-fashion-mnist`) out as an image
folder: OUT/<class>/<index>.png, 8-bit grey PNGs. Standard library only.

    scripts/make-image-folder.py --out /tmp/fashion-png/train [--split train|t10k]
        [--per-class N] [--idx-dir /usr/share/datasets/fashion-mnist]
"""

import argparse
import gzip
import os
import struct
import zlib

CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]


def png(width, height, pixels):
    """An 8-bit greyscale PNG of `pixels` (bytes, row-major)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="train", choices=["train", "t10k"])
    ap.add_argument("--per-class", type=int, default=0, help="0: every image")
    ap.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    with gzip.open(os.path.join(a.idx_dir, f"{a.split}-images-idx3-ubyte.gz")) as f:
        magic, n, h, w = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, "not an IDX3 image file"
        images = f.read(n * h * w)
    with gzip.open(os.path.join(a.idx_dir, f"{a.split}-labels-idx1-ubyte.gz")) as f:
        magic, m = struct.unpack(">II", f.read(8))
        assert magic == 2049 and m == n, "labels do not match the images"
        labels = f.read(n)
    counts = [0] * len(CLASSES)
    for name in CLASSES:
        os.makedirs(os.path.join(a.out, name), exist_ok=True)
    for i in range(n):
        label = labels[i]
        if a.per_class and counts[label] >= a.per_class:
            continue
        counts[label] += 1
        path = os.path.join(a.out, CLASSES[label], f"{i:05d}.png")
        with open(path, "wb") as f:
            f.write(png(w, h, images[i * h * w:(i + 1) * h * w]))
    print(f"{sum(counts)} images in {len(CLASSES)} class folders under {a.out}")


if __name__ == "__main__":
    main()
