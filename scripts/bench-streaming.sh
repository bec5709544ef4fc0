#!/usr/bin/env bash
# data.streaming: peak RSS and training samples/s of examples/wide_streaming.toml's MLP on the
# 50 M-row Parquet file (streamed, one epoch), against the same model on a 5 M-row (467 MB)
# slice of it held in memory, in one script on a quiet machine. Needs numpy and pyarrow;
# KILN=path/to/kiln (release). Makes the files when they are missing:
#   python3 scripts/make-tabular.py --rows 50000000 --out /tmp/wide50m.parquet
set -euo pipefail
KILN="${KILN:-target/release/kiln}"
BIG="${BIG:-/tmp/wide50m.parquet}"
SLICE="${SLICE:-/tmp/wide5m.parquet}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
[ -f "$BIG" ] || python3 scripts/make-tabular.py --rows 50000000 --out "$BIG"
[ -f "$SLICE" ] || python3 - "$BIG" "$SLICE" <<'PY'
import sys, pyarrow.parquet as pq
source = pq.ParquetFile(sys.argv[1])
writer = None
for g in range(5):
    t = source.read_row_group(g)
    writer = writer or pq.ParquetWriter(sys.argv[2], t.schema, compression="snappy")
    writer.write_table(t, row_group_size=1_000_000)
writer.close()
PY
ls -l "$BIG" "$SLICE"
uptime
run() {
    local name="$1" source="$2"; shift 2
    /usr/bin/time -f "$name: %e s wall, peak RSS %M KB" \
        "$KILN" train examples/wide_streaming.toml --quiet --json \
        --set data.source="\"$source\"" --set output.dir="\"$OUT\"" --set output.name="\"$name\"" "$@" \
        > "$OUT/$name.json"
    python3 - "$OUT/$name.json" "$OUT/$name/metrics.jsonl" "$name" <<'PY'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
epochs = [json.loads(l) for l in open(sys.argv[2]) if '"kind":"epoch"' in l]
rows = summary["rows"]["train"] * len(epochs)
step = sum(e["step_seconds"] for e in epochs)
wait = sum(e["data_wait_seconds"] for e in epochs)
print(f"{sys.argv[3]}: {rows} training rows, {rows / step:.0f} samples/s over {step:.1f} s of steps (data wait {100 * wait / step:.1f} %); "
      f"total {summary['train_seconds']:.1f} s; test accuracy {summary['test']['accuracy']:.4f}")
PY
}
run streamed "$BIG"
run in-memory "$SLICE" --set data.streaming=false
