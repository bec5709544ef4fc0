#!/usr/bin/env python3
"""Writes the Parquet and Feather fixtures of crates/kiln-data/tests/formats.rs with pyarrow,
as pandas and pyarrow users write them (pip install pyarrow; committed, so CI needs no Python):

  pyarrow_snappy.parquet   snappy (pandas' default), two row groups
  pyarrow_zstd.parquet     zstd (polars' default)
  pyarrow.feather          Feather v2 with LZ4 (pyarrow's default)
  pyarrow_brotli.parquet   brotli, a codec kiln is built without (its error is tested)

Columns: id (int64), score (float64, NaN as pandas writes a missing float), count (int64
with a null, pandas' Int64), flag (bool), city (dictionary, a pandas category), at
(timestamp[ms, UTC]), user (struct of name: string, age: int32).
"""
import pathlib

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

out = pathlib.Path(__file__).resolve().parent.parent / "crates/kiln-data/tests/fixtures"
out.mkdir(parents=True, exist_ok=True)
table = pa.table(
    {
        "id": pa.array([1, 2, 3, 4], pa.int64()),
        "score": pa.array([0.5, float("nan"), -1.25, 3.0], pa.float64()),
        "count": pa.array([10, None, 30, 40], pa.int64()),
        "flag": pa.array([True, False, None, True]),
        "city": pa.array(["Lyon", "Nice", "Lyon", None]).dictionary_encode(),
        "at": pa.array([0, 1_000, None, 86_400_000], pa.timestamp("ms", tz="UTC")),
        "user": pa.array(
            [{"name": "ann", "age": 31}, {"name": "bo", "age": None}, None, {"name": "cy", "age": 7}],
            pa.struct([("name", pa.string()), ("age", pa.int32())]),
        ),
    }
)
pq.write_table(table, out / "pyarrow_snappy.parquet", compression="snappy", row_group_size=2)
pq.write_table(table, out / "pyarrow_zstd.parquet", compression="zstd")
feather.write_feather(table, out / "pyarrow.feather")
pq.write_table(table.select(["id"]), out / "pyarrow_brotli.parquet", compression="brotli")
for f in sorted(out.glob("pyarrow*")):
    print(f, f.stat().st_size, "bytes")
