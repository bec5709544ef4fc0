#!/usr/bin/env bash
# Resident memory of `kiln serve` around a burst of concurrent generate requests: trains a
# small GPT, serves it, fires N concurrent requests with curl and prints the server's RSS
# before, at the peak and 5 s after the burst. Usage:
#   scripts/burst-memory.sh [N=300] [TOKENS=64]
# KILN picks the binary (default target/release/kiln); KILN_ALLOC_DEFAULTS=1 compares against
# mimalloc's own purging.
set -euo pipefail
N=${1:-300}
TOKENS=${2:-64}
KILN=$(realpath "${KILN:-target/release/kiln}")
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
cd "$DIR"
python3 -c 'print("the cat sat on the mat and the dog ran to the park. " * 400)' > corpus.txt
cat > gpt.toml <<'TOML'
seed = 1
[data]
source = "corpus.txt"
[text]
tokenizer = "char"
val_fraction = 0.1
[model]
type = "gpt"
layers = 4
heads = 4
embd = 128
context = 128
[trainer]
max_steps = 3
batch_size = 8
eval_every_steps = 3
eval_batches = 1
[output]
plots = false
TOML
RUN=$("$KILN" train gpt.toml --json | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_dir"])')
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$KILN" serve "gpt=$RUN" --port "$PORT" --max-concurrent $((N + 10)) --max-new-tokens "$TOKENS" 2> serve.log &
PID=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null && break
    sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
mb() { echo "$(( $1 / 1024 )) MB"; }
before=$(rss)
for i in $(seq "$N"); do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:$PORT/v1/models/gpt/generate" \
        -d "{\"prompt\": \"the cat\", \"max_new_tokens\": $TOKENS, \"seed\": $i}" >> codes.txt &
done
peak=$before
start=$(date +%s.%N)
while [ -n "$(jobs -rp | grep -v "^$PID\$")" ]; do
    r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.05
done
took=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
end=$(rss)
sleep 5
after=$(rss)
echo "$N concurrent generate requests of $TOKENS tokens in ${took} s: $(sort codes.txt | uniq -c | tr -s ' ' | tr '\n' ';')"
echo "RSS before $(mb "$before"), peak $(mb "$peak"), at the end $(mb "$end"), 5 s after $(mb "$after")"
echo "load: $(uptime)"
