#!/usr/bin/env bash
# kiln against PyTorch on the shared CPU workloads (../shared/bench/WORKLOADS.md: W1 MLP, W2 GPT,
# W2D GPT with dropout, W3 CNN, W4 padded text classifier training steps, I1 GPT forward
# latency) and kiln's LV (W2's step over a 4 616-symbol vocabulary: scripts/torch-large-vocab.py
# runs PyTorch's side), side by side on this machine.
#
# Sets up the PyTorch reference venv if missing (torch, numpy, onnx, onnxruntime; ~3 GB), then
# runs kiln's workload bench and torch_reference.py back to back, alternating, ROUNDS times
# (default 3), each workload in its own process under /usr/bin/time for its peak RSS. Writes the
# medians, the kiln/PyTorch ratios, the date, CPU model, threads and load average into
# BENCHMARKS.md (between the bench-vs-torch markers) and prints the table.
#
# Usage: scripts/bench-vs-torch.sh          (ROUNDS=5 TORCHREF_VENV=path WORKLOADS="W2D W4" to override)
set -euo pipefail
cd "$(dirname "$0")/.."
reference=${TORCH_REFERENCE:-../shared/bench/torch_reference.py}
venv=${TORCHREF_VENV:-.venv-torchref}
rounds=${ROUNDS:-3}
workloads=${WORKLOADS:-W1 W2 W2D W3 W4 I1 LV}
[ -f "$reference" ] || { echo "no $reference (the shared PyTorch reference)" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  echo "== setting up the PyTorch reference venv in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch numpy onnx onnxruntime
fi
reference=$(realpath "$reference")
# Not realpath: that resolves the venv's symlink to the base interpreter, outside the venv.
python="$(cd "$venv/bin" && pwd)/python"
echo "== building kiln's workload bench" >&2
bench=$(cargo bench -p kiln-train --bench workloads --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -1)
[ -x "$bench" ] || { echo "could not build the workload bench" >&2; exit 1; }
bench=$(realpath "$bench")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
  for w in $workloads; do
    echo "== round $round/$rounds: $w" >&2
    /usr/bin/time -f "%M" -o "$work/rss" "$bench" "$w" > "$work/out" 2>"$work/err" \
      || { cat "$work/err" >&2; echo "kiln's $w bench failed" >&2; exit 1; }
    sed "s/\$/ rss_kib=$(tail -1 "$work/rss")/" "$work/out" >> "$work/results"
    if [ "$w" = LV ]; then
      torch_run=("$python" "$(realpath scripts/torch-large-vocab.py)" "$reference" --engines eager,compile)
    else
      torch_run=("$python" "$reference" --engines eager,compile,onnx --workloads "$w")
    fi
    (cd "$work" && /usr/bin/time -f "%M" -o "$work/rss" "${torch_run[@]}" > "$work/out" 2>"$work/err") \
      || { cat "$work/err" >&2; echo "the PyTorch reference failed on $w" >&2; exit 1; }
    sed "s/\$/ rss_kib=$(tail -1 "$work/rss")/" "$work/out" >> "$work/results"
  done
done
# Roofline: the same matrix products in kiln (Burn Flex -> gemm crate) and PyTorch (MKL).
for round in $(seq "$rounds"); do
  echo "== round $round/$rounds: matmul roofline" >&2
  "$bench" MM | sed 's/$/ rss_kib=0/' >> "$work/results"
  "$python" - <<'MM' | sed 's/$/ rss_kib=0/' >> "$work/results"
import time, torch
torch.manual_seed(0)
for m, k, n in [(1024, 1024, 1024), (2048, 256, 768), (2048, 256, 256), (2048, 256, 1024), (2048, 1024, 256)]:
    a, b = torch.rand(m, k), torch.rand(k, n)
    a @ b
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    print(f"RESULT torch-eager MM{m}x{k}x{n} {2 * m * k * n / best / 1e9:.1f} GFLOP/s")
MM
done
"$bench" W2-FLOPS >> "$work/results"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$work/results" "$load_before" "$load_after" "$rounds" <<'PY'
import datetime, os, re, statistics, subprocess, sys
path, load_before, load_after, rounds = sys.argv[1:5]
values, rss = {}, {}
units = {}
for line in open(path):
    m = re.match(r"RESULT (\S+) (\S+) (\S+) (\S+) rss_kib=(\d+)", line.strip())
    if not m:
        continue
    engine, workload, value, unit, kib = m.groups()
    values.setdefault((engine, workload), []).append(float(value))
    rss.setdefault((engine, workload), []).append(int(kib) / 1024)
    units[workload] = unit
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
engines = ["kiln", "torch-eager", "torch-compile", "onnxruntime"]
lines = [
    f"Measured {datetime.date.today()} by `scripts/bench-vs-torch.sh` ({rounds} alternating rounds, medians): "
    f"{cpu}, {os.cpu_count()} threads, load average {load_before} before, {load_after} after. "
    "Ratios: kiln's throughput over the engine's (W1-W4, LV), the engine's latency over kiln's (I1); "
    "above 1 means kiln is faster. Peak RSS of the whole process per workload.",
    "",
    "| workload | unit | " + " | ".join(engines) + " | kiln / eager | kiln / compile | kiln / onnxruntime | peak RSS kiln / eager (MiB) |",
    "|---" * (len(engines) + 6) + "|",
]
mm = sorted({w for (_, w) in values if w.startswith("MM")})
for w in ["W1", "W2", "W2D", "W3", "W4", "I1", "LV"] + mm:
    med = {e: statistics.median(values[(e, w)]) for e in engines if (e, w) in values}
    if "kiln" not in med:
        continue
    def ratio(e):
        if e not in med:
            return "–"
        r = med[e] / med["kiln"] if units[w] == "ms" else med["kiln"] / med[e]
        return f"{r:.2f}×"
    mem = lambda e: f"{statistics.median(rss[(e, w)]):.0f}" if (e, w) in rss and w[:2] != "MM" else "–"
    cells = [f"{med[e]:,.1f}" if e in med else "–" for e in engines]
    lines.append(f"| {w} | {units[w]} | " + " | ".join(cells) + f" | {ratio('torch-eager')} | {ratio('torch-compile')} | {ratio('onnxruntime')} | {mem('kiln')} / {mem('torch-eager')} |")
flops = next((float(l.split()[2]) for l in open(path) if l.startswith("FLOPS_PER_TOKEN W2")), None)
if mm and flops:
    peak = max(statistics.median(values[(e, w)]) for (e, w) in values if w.startswith("MM"))
    lines += ["", f"Roofline: this machine's f32 matmul peak, the best median GFLOP/s of any engine on the MM rows, is **{peak:.0f} GFLOP/s**. "
              f"W2 model FLOPs (nanoGPT's estimate_mfu: 6 x non-embedding parameters + 12 x layers x width x context per token) = {flops / 1e6:.2f} MFLOP/token, so W2's MFU is:"]
    for e in engines:
        if (e, "W2") in values:
            achieved = statistics.median(values[(e, "W2")]) * flops / 1e9
            lines.append(f"- {e}: {achieved:.1f} GFLOP/s = **{100 * achieved / peak:.0f}%** of peak")
table = "\n".join(lines)
print(table)
start, end = "<!-- bench-vs-torch:start -->", "<!-- bench-vs-torch:end -->"
doc = open("BENCHMARKS.md").read()
section = f"{start}\n{table}\n{end}"
if start in doc and end in doc:
    doc = doc[: doc.index(start)] + section + doc[doc.index(end) + len(end):]
else:
    doc += f"\n## kiln vs PyTorch on the shared workloads\n\n{section}\n"
open("BENCHMARKS.md", "w").write(doc)
PY
