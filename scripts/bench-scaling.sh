#!/usr/bin/env bash
# Data-parallel scaling on this machine: the real `kiln train` loop for W1 (Fashion-MNIST MLP
# 784-512-256-10, Adam 1e-3, batch 128) and W2 (char GPT, 4 layers, 4 heads, 256 wide, context
# 128, batch 16, AdamW 3e-4, wd 0.1; see ../shared/bench/WORKLOADS.md), each as 1 process x 2
# threads and as `mpirun -np 2` x 1 thread (the same global batch). Prints throughput from
# metrics.jsonl's step windows after the first, the share of training spent in the gradient
# all-reduce and its bus bandwidth (rank 0's view), then a ring all-reduce model of larger
# clusters from those figures.
#
# Needs scripts/setup-data.sh (Fashion-MNIST) and scripts/setup-mpi.sh. Builds
# `cargo build --release --features mpi` unless KILN= names a kiln built with it.
# Usage: scripts/bench-scaling.sh   (ROUNDS=3 by default; W1_EPOCHS=1, W2_STEPS=50)
# LAYOUTS="1x4 2x4 4x4 8x2" (processes x threads each; the default "1x2 2x1" fits this 2-core
# box) runs other layouts, e.g. on a 16-core machine; efficiency is throughput per core used
# against the first layout's.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
w1_epochs=${W1_EPOCHS:-1}
w2_steps=${W2_STEPS:-50}
layouts=${LAYOUTS:-"1x2 2x1"}
if [ -z "${KILN:-}" ]; then
  cargo build --release -p kiln-cli --features mpi >&2
  KILN=target/release/kiln
fi
kiln=$(realpath "$KILN")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
find ~/.cargo/registry/src -maxdepth 3 -name 'LICENSE*' -type f -print0 | sort -z \
  | xargs -0 cat | LC_ALL=C tr -cd '\11\12\15\40-\176' > "$work/corpus.txt"
w1=(train --data /usr/share/datasets/fashion-mnist/train --set model.type=mlp
    --set 'model.hidden=[512,256]' --set model.dropout=0.0 --set trainer.optimizer=adam
    --set trainer.lr=1e-3 --set trainer.batch_size=128 --set "trainer.epochs=$w1_epochs"
    --set trainer.log_every_steps=20 --set 'data.split={validation=0.01}' --set output.plots=false)
w2=(train --data corpus.txt --set model.type=gpt --set text.tokenizer=char
    --set model.layers=4 --set model.heads=4 --set model.embd=256 --set model.context=128
    --set model.dropout=0.0 --set model.bias=false --set model.tied_head=true
    --set "trainer.max_steps=$w2_steps" --set trainer.batch_size=16 --set trainer.optimizer=adamw
    --set trainer.lr=3e-4 --set trainer.weight_decay=0.1 --set trainer.log_every_steps=10
    --set trainer.eval_every_steps=100000 --set trainer.eval_batches=1 --set output.plots=false)
run() { # WORKLOAD LAYOUT ROUND ARGS...
  local name="$1-$2-$3" procs="${2%x*}" threads="${2#*x}"; shift 3
  if [ "$procs" = 1 ]; then
    (cd "$work" && RAYON_NUM_THREADS="$threads" "$kiln" "$@" --set "output.name=\"$name\"" --json)
  else
    local bind=none; [ "$threads" = 1 ] && bind=core
    (cd "$work" && mpirun -np "$procs" --oversubscribe --bind-to "$bind" \
        -x RAYON_NUM_THREADS="$threads" "$kiln" "$@" --set "output.name=\"$name\"" --json)
  fi > "$work/$name.json" 2> "$work/$name.err" || { cat "$work/$name.err" >&2; exit 1; }
  echo "$name $work/runs/$name/metrics.jsonl $work/$name.json"
}
for round in $(seq "$rounds"); do
  for layout in $layouts; do
    run W1 "$layout" "$round" "${w1[@]}"
    run W2 "$layout" "$round" "${w2[@]}"
  done
done > "$work/index"
python3 - "$work/index" $layouts <<'PY'
import json, statistics, sys
layouts = sys.argv[2:]
rows = {}
for line in open(sys.argv[1]):
    name, metrics, summary = line.split()
    workload, layout, _ = name.split("-")
    rates = [r["samples_per_sec"] for r in map(json.loads, open(metrics)) if r.get("kind") == "step"]
    s = json.loads(open(summary).read().strip().splitlines()[-1])
    ar = s.get("all_reduce") or {}
    seconds = s["train_seconds"]
    rows.setdefault((workload, layout), []).append((
        statistics.mean(rates[1:]),
        ar.get("seconds", 0.0) / seconds,
        ar.get("seconds", 0.0) / max(ar.get("calls", 1), 1),
        ar.get("bytes_per_call", 0),
    ))
unit = {"W1": "samples/s", "W2": "tokens/s"}
first = layouts[0]
cores = lambda layout: int(layout.split("x")[0]) * int(layout.split("x")[1])
print(f"{'workload':8} {'layout':26} {'throughput':>16} {'vs ' + first:>8} {'efficiency':>10} "
      f"{'all-reduce':>11} {'per step':>9} {'bus GB/s':>9}")
measured = {}
for workload in ("W1", "W2"):
    for layout in layouts:
        vals = rows[(workload, layout)]
        rate = statistics.median(v[0] for v in vals)
        share = statistics.median(v[1] for v in vals)
        per_step = statistics.median(v[2] for v in vals)
        size = vals[0][3]
        n = int(layout.split("x")[0])
        base = statistics.median(v[0] for v in rows[(workload, first)])
        busbw = size / per_step * 2 * (n - 1) / n / 1e9 if per_step > 0 else 0.0
        measured[(workload, layout)] = (rate, per_step, size, busbw)
        eff = (rate / cores(layout)) / (base / cores(first))
        p, t = layout.split("x")
        what = f"{p} process{'es' if p != '1' else ''} x {t} thread{'s' if t != '1' else ''}"
        print(f"{workload:8} {what:26} {rate:10.1f} {unit[workload]:>5} {rate / base:7.2f}x "
              f"{100 * eff:9.0f}% {100 * share:9.1f}% {1e3 * per_step:7.2f}ms {busbw:9.2f}")
print(f"(medians of {len(next(iter(rows.values())))} rounds)")

# Ring all-reduce model: T = 2(n-1)/n * S / B + 2(n-1) * alpha, S gradient bytes, B link
# bandwidth, alpha per-message latency (5 us, a typical RDMA/TCP-offload figure; stated, not
# measured).
rate = measured[("W2", first)][0] / cores(first) * 2  # per 2 cores, as this box
size_w2 = max(measured[("W2", l)][2] for l in layouts)
params_w2 = size_w2 / 4
flops = 6 * params_w2 * rate  # training FLOP/s of this machine on W2 (6 per parameter per token)
alpha = 5e-6
print()
print("ring all-reduce time per step (alpha 5 us per message, no overlap):")
print(f"{'gradient':26} {'ranks':>5} {'25 Gb/s':>10} {'100 Gb/s':>10}")
for label, size in [(f"W2 ({size_w2 / 1e6:.1f} MB)", size_w2), ("GPT-2 124M (498 MB)", 124_439_808 * 4)]:
    for n in (8, 64, 512):
        t = [2 * (n - 1) / n * size / (gbps * 1e9 / 8) + 2 * (n - 1) * alpha for gbps in (25, 100)]
        print(f"{label:26} {n:5d} {1e3 * t[0]:8.1f}ms {1e3 * t[1]:8.1f}ms")
# Overlap break-even: the reduction hides behind the backward pass (2/3 of a step's 6 FLOPs per
# parameter per token) while 2 * 4P / B <= (2/3) * 6 * P * T / F, i.e. B >= 2 F / T bytes/s,
# whatever the model size P (T tokens per rank per step, F the rank's FLOP/s).
print()
print(f"this machine trains W2 at {flops / 1e9:.0f} GFLOP/s per 2 cores (6 x {params_w2 / 1e6:.2f} M parameters x {rate:.0f} tokens/s)")
for label, f, tokens in [("this machine, W2's batch (16 x 128 tokens)", flops, 16 * 128),
                         ("a GPU at 160 TFLOP/s, 16 x 1024 tokens", 160e12, 16 * 1024)]:
    need = 2 * f / tokens
    print(f"break-even link bandwidth, {label}: {need / 1e9:.2f} GB/s = {8 * need / 1e9:.1f} Gb/s")
PY
