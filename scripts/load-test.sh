#!/usr/bin/env bash
# Load test of `kiln serve` from a second process (wrk): 64 connections for 30 s against the
# v2 infer endpoint of one image model, with dynamic batching on and then off. Prints wrk's
# throughput and latency percentiles, the errors, and the server's RSS before and after.
# Needs: wrk (apt install wrk), a release build (cargo build --release), a CNN run directory.
# Usage: scripts/load-test.sh RUN_DIR [SECONDS] [CONNECTIONS]
# SERVE_ARGS adds server flags (e.g. "--log-level off"); SERVE_LOG is where the server's
# stderr (its access lines) goes (default /dev/null); MODES="batching no-batching".
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: scripts/load-test.sh RUN_DIR [SECONDS] [CONNECTIONS]}
secs=${2:-30}
conns=${3:-64}
port=8765
kiln=target/release/kiln
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
[ -x "$kiln" ] || { echo "$kiln not built: cargo build --release" >&2; exit 1; }
body=$(mktemp); lua=$(mktemp --suffix .lua)
# One image as tritonclient sends it by default: a JSON header, then the raw FP32 tensor
# (Open Inference Protocol binary tensor extension). --json sends the values in the JSON.
encoding=${LOAD_ENCODING:-binary}
header_len=$(python3 - "$run" "$body" "$encoding" <<'PY'
import json, random, struct, sys
meta = json.load(open(sys.argv[1] + "/preprocessor.json"))
f = meta["features"][0]
h, w = f["height"], f["width"]
random.seed(1)
pixels = [float(random.randrange(256)) for _ in range(h * w)]
tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 1, h, w]}
if sys.argv[3] == "json":
    tensor["data"] = pixels
    header, blob = json.dumps({"inputs": [tensor]}).encode(), b""
else:
    blob = struct.pack("<%df" % len(pixels), *pixels)
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
open(sys.argv[2], "wb").write(header + blob)
print(len(header) if blob else 0)
PY
)
cat > "$lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
if $header_len > 0 then wrk.headers["Inference-Header-Content-Length"] = "$header_len" end
local f = io.open("$body", "rb"); wrk.body = f:read("*a"); f:close()
LUA
rss() { awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/"$1"/status; }
for mode in ${MODES:-batching no-batching}; do
  flag=""; [ "$mode" = no-batching ] && flag="--no-batching"
  # shellcheck disable=SC2086
  $kiln serve "model=$run" --port $port --max-concurrent 1024 $flag ${SERVE_ARGS:-} 2>>"${SERVE_LOG:-/dev/null}" &
  pid=$!
  until curl -sf localhost:$port/v2/health/ready >/dev/null; do sleep 0.2; done
  # Warm up, then measure.
  wrk -t2 -c"$conns" -d5s -s "$lua" http://127.0.0.1:$port/v2/models/model/infer >/dev/null
  before=$(rss $pid)
  echo "== $mode ($encoding tensors): wrk -t2 -c$conns -d${secs}s (RSS before: $before)"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$lua" http://127.0.0.1:$port/v2/models/model/infer \
    | grep -E "Requests/sec|Latency  |50%|90%|99%|requests in|Non-2xx|Socket errors"
  echo "RSS after: $(rss $pid)"
  curl -s localhost:$port/metrics | grep -E '^kiln_batch_size_(sum|count)|^kiln_request_errors_total' || true
  kill -TERM $pid; wait $pid || true
done
rm -f "$body" "$lua"
