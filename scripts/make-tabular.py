#!/usr/bin/env python3
"""Writes a synthetic tabular set for the data-layer benchmarks (not committed data).

    python3 scripts/make-tabular.py --rows 2000000 --out /tmp/wide.csv
    python3 scripts/make-tabular.py --rows 50000000 --out /tmp/wide.parquet   # needs pyarrow

Columns: x0..x19 (float32, about 1 % missing), c0..c2 (categories with 5, 20 and 200 levels)
and `label` (yes/no from a noisy linear rule of x0..x4 and c0, so a model has something to
learn). Written in chunks of 1 M rows, so any row count fits in memory; the same --seed gives
the same rows. CSV (or .csv.gz), Parquet (snappy, a row group per chunk), Arrow IPC
(.arrow/.feather) or JSON Lines by the output's extension. Needs numpy.
"""
import argparse
import gzip
import json

import numpy as np

NUMERIC = 20
LEVELS = [5, 20, 200]
CHUNK = 1_000_000


def chunk(rng, rows):
    x = rng.standard_normal((rows, NUMERIC), dtype=np.float32)
    cats = [rng.integers(0, n, rows) for n in LEVELS]
    score = x[:, :5] @ np.array([1.5, -1.0, 0.8, 0.5, -0.3], dtype=np.float32)
    score += (cats[0] - 2) * 0.4 + rng.standard_normal(rows, dtype=np.float32) * 0.5
    label = np.where(score > 0, "yes", "no")
    missing = rng.random((rows, NUMERIC)) < 0.01
    return x, missing, cats, label


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    names = [f"x{i}" for i in range(NUMERIC)] + [f"c{i}" for i in range(len(LEVELS))] + ["label"]
    out = args.out.lower()
    columnar = out.endswith((".parquet", ".arrow", ".feather"))
    if columnar:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import pyarrow.ipc as ipc
        writer = None
    elif out.endswith(".gz"):
        sink = gzip.open(args.out, "wt", encoding="utf-8", newline="")
    else:
        sink = open(args.out, "w", encoding="utf-8", newline="")
    if not columnar and not out.endswith((".jsonl", ".jsonl.gz")):
        sink.write(",".join(names) + "\n")
    done = 0
    while done < args.rows:
        rows = min(CHUNK, args.rows - done)
        x, missing, cats, label = chunk(rng, rows)
        cat_text = [np.char.add(f"c{i}_", c.astype(str)) for i, c in enumerate(cats)]
        if columnar:
            arrays = [pa.array(x[:, i], mask=missing[:, i]) for i in range(NUMERIC)]
            # One dictionary of every level for all chunks: an Arrow IPC file allows no other.
            arrays += [
                pa.DictionaryArray.from_arrays(
                    pa.array(c, type=pa.int32()), pa.array([f"c{i}_{k}" for k in range(n)])
                )
                for i, (c, n) in enumerate(zip(cats, LEVELS))
            ] + [pa.array(label)]
            batch = pa.record_batch(arrays, names=names)
            if writer is None:
                writer = (
                    pq.ParquetWriter(args.out, batch.schema, compression="snappy")
                    if out.endswith(".parquet")
                    else ipc.new_file(args.out, batch.schema)
                )
            if out.endswith(".parquet"):
                writer.write_batch(batch, row_group_size=rows)
            else:
                writer.write_batch(batch)
        else:
            text = np.char.mod("%.4f", x).astype(object)
            text[missing] = ""
            lines = []
            for r in range(rows):
                values = list(text[r]) + [cat_text[0][r], cat_text[1][r], cat_text[2][r], label[r]]
                if out.endswith((".jsonl", ".jsonl.gz")):
                    record = {n: (float(v) if v != "" and i < NUMERIC else (v or None)) for i, (n, v) in enumerate(zip(names, values))}
                    lines.append(json.dumps(record))
                else:
                    lines.append(",".join(values))
            sink.write("\n".join(lines) + "\n")
        done += rows
    if columnar:
        writer.close()
    else:
        sink.close()
    print(f"{args.out}: {done} rows x {len(names)} columns")


if __name__ == "__main__":
    main()
