#!/usr/bin/env bash
# The GPU check for a lent device machine (an H200 or H100 with 16 cores, torch installed, no
# network), in two halves:
#
#   scripts/device-check.sh prepare   # here: build kiln --features vulkan,cuda and collect what the
#                                     # device machine lacks into .device/ (git-ignored)
#   scripts/device-check.sh run       # there, in one call with carry [".device"]:
#                                     # bash scripts/device-check.sh run   (about 5 minutes)
#
# `run` prints, for a GPT-2-small-shaped model (12 layers, 12 heads, 768 wide, context 1024,
# vocabulary 50 304 from a BPE tokenizer trained on People's Daily), training tokens/s and MFU
# for kiln (`kiln train --device vulkan`, f32 and f16-mixed) and PyTorch eager (f32 and bf16
# autocast) on the
# same GPU, then `kiln serve` throughput of the Fashion CNN with and without dynamic batching on
# the machine's cores (scripts/load-test.sh with a carried wrk). Figures go to BENCHMARKS.md.
# STEPS (40), BATCH (8), PEAK_TFLOPS (989: H100/H200 SXM dense bf16) and PRECISIONS (kiln's,
# "f32 f16-mixed"; wgpu has no bf16) change the run;
# LAYERS, HEADS, EMBD, CONTEXT shrink the model; DEVICE (vulkan) picks kiln's device (`cuda`:
# Burn's CUDA runtime, where PRECISIONS defaults to "f32 bf16-mixed"), and KILN (a binary) with
# DEVICE=gpu (a --features wgpu build) tries `run` on a machine without a GPU (lavapipe);
# SERVE=0 skips serving.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
mode=${1:?usage: scripts/device-check.sh prepare|run}
dev=.device

prepare() {
  local exclude
  exclude="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
  mkdir -p "$dev/debs" /tmp/amd64/partial
  scripts/setup-cuda-build.sh
  cargo build --release --features vulkan,cuda
  cp target/release/kiln "$dev/kiln"
  strip "$dev/kiln"
  # The Vulkan loader (the NVIDIA driver brings its ICD, not always the loader) and wrk with
  # its LuaJIT, as .debs unpacked there.
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd "$dev/debs" && apt-get $o download libvulkan1 wrk libluajit-5.1-2)
  # Token files and the 50 304-token BPE tokenizer.
  [ -f data/peoples_daily.txt ] || scripts/setup-text-data.sh
  rm -rf "$dev/corpus"
  "$dev/kiln" data prepare-text data/peoples_daily.txt --tokenizer bpe --vocab-size 50304 \
    --val-fraction 0.05 --out "$dev/corpus"
  # A Fashion CNN run to serve (the architecture of examples/fashion_cnn.toml; one epoch: the
  # throughput does not depend on how well it is trained).
  [ -d /usr/share/datasets/fashion-mnist ] || scripts/setup-data.sh
  rm -rf "$dev/fashion-cnn"
  "$dev/kiln" train examples/fashion_cnn.toml --quiet --set trainer.epochs=1 \
    --set output.dir="$dev" --set output.name=fashion-cnn
  rm -rf "$dev/fashion-cnn/checkpoints" "$dev/fashion-cnn/plots"
  du -sh "$dev"
  echo "prepared: carry [\".device\"] and run: bash scripts/device-check.sh run"
}

gpt_config() {
  cat <<EOF
seed = 1
[data]
source = "$PWD/$dev/corpus"
[model]
type = "gpt"
layers = ${LAYERS:-12}
heads = ${HEADS:-12}
embd = ${EMBD:-768}
context = ${CONTEXT:-1024}
dropout = 0.0
[trainer]
max_steps = ${STEPS:-40}
batch_size = ${BATCH:-8}
optimizer = "adamw"
lr = 0.0006
schedule = "constant"
log_every_steps = 5
eval_every_steps = 100000
eval_batches = 1
[output]
dir = "/tmp/device-check"
plots = false
EOF
}

run() {
  local kiln=${KILN:-$dev/kiln} device=${DEVICE:-vulkan}
  [ -x "$kiln" ] || { echo "$kiln missing: scripts/device-check.sh prepare, then carry .device" >&2; exit 1; }
  if ! ldconfig -p | grep 'libvulkan.so.1 ' > /dev/null; then
    for f in "$dev"/debs/libvulkan1_*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  mkdir -p "$dev/wrk"
  for f in "$dev"/debs/wrk_*.deb "$dev"/debs/libluajit-5.1-2_*.deb; do dpkg -x "$f" "$dev/wrk"; done
  local icds=(/usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia*)
  if [ ${#icds[@]} -eq 0 ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
  echo "== machine"
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  echo "cores: $(nproc)"
  peak=${PEAK_TFLOPS:-989}

  cfg=$(mktemp --suffix .toml)
  gpt_config > "$cfg"
  local kiln_json precision
  local precisions="f32 f16-mixed"
  [ "$device" != cuda ] || precisions="f32 bf16-mixed"
  for precision in ${PRECISIONS:-$precisions}; do
  echo "== kiln: GPT-2-small-shaped training, $precision, --device $device"
  rm -rf /tmp/device-check
  kiln_json=$(timeout 200 "$kiln" train "$cfg" --device "$device" --precision "$precision" --quiet --json --set output.name=gpt2 | tail -1) || {
    echo "kiln train --device $device failed; the same on --device gpu (WGSL kernels):"
    rm -rf /tmp/device-check
    kiln_json=$(timeout 200 "$kiln" train "$cfg" --device gpu --precision "$precision" --quiet --json --set output.name=gpt2 | tail -1) || kiln_json='{}'
  }
  python3 - "$kiln_json" "$peak" /tmp/device-check "${LAYERS:-12}" "${CONTEXT:-1024}" "${EMBD:-768}" <<'PY'
import glob, json, statistics, sys
summary = json.loads(sys.argv[1] or "{}")
peak = float(sys.argv[2]) * 1e12
layers, context, embd = (int(v) for v in sys.argv[4:7])
if not summary:
    print("kiln: no result")
    sys.exit(0)
steps = []
for path in glob.glob(sys.argv[3] + "/*/metrics.jsonl"):
    steps += [json.loads(l) for l in open(path) if '"kind":"step"' in l]
# Steady state: the records after the first 10 steps (autotuning and first compiles).
rates = [s["samples_per_sec"] for s in steps if s["step"] > 10]
if not rates:
    print("kiln: no step records after step 10 (STEPS must be at least 15)")
    sys.exit(0)
tokens = statistics.median(rates) * context
params = summary["parameters"]
flops = 6 * params + 12 * layers * context * embd
print(json.dumps({"engine": "kiln", "device": summary["run"]["machine"]["device"],
                  "precision": summary["run"]["precision"]["name"],
                  "tokens_per_s": tokens, "parameters": params,
                  "mfu_vs_bf16_peak": tokens * flops / peak}))
PY
  done

  echo "== PyTorch eager on the same GPU (f32 without TF32, then bf16 autocast)"
  local torch_json
  for dtype in f32 bf16; do
    if torch_json=$(timeout 240 python3 scripts/torch-gpt-gpu.py --dtype "$dtype" --batch "${BATCH:-8}" \
      --layers "${LAYERS:-12}" --heads "${HEADS:-12}" --embd "${EMBD:-768}" --context "${CONTEXT:-1024}"); then
      python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['mfu_vs_bf16_peak']=r['tokens_per_s']*r['flops_per_token']/($peak*1e12); print(json.dumps(r))" "$torch_json"
    else
      echo "torch $dtype: failed"
    fi
  done

  [ "${SERVE:-1}" = 1 ] || return 0
  echo "== kiln serve, Fashion CNN, dynamic batching on and off, on $(nproc) cores"
  # scripts/load-test.sh serves target/release/kiln.
  mkdir -p target/release
  [ "$kiln" -ef target/release/kiln ] || cp "$kiln" target/release/kiln
  PATH="$PWD/$dev/wrk/usr/bin:$PATH" \
    LD_LIBRARY_PATH="$PWD/$dev/wrk/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}" \
    SERVE_ARGS="--log-level off" scripts/load-test.sh "$dev/fashion-cnn" 20 64
}

case "$mode" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: scripts/device-check.sh prepare|run" >&2; exit 1 ;;
esac
