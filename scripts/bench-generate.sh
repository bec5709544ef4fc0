#!/usr/bin/env bash
# Generation speed with and without the KV cache: alternates N runs of each on a trained GPT
# run directory and prints the medians and their ratio. Usage:
#   scripts/bench-generate.sh RUN_DIR [TOKENS=256] [N=5]
set -euo pipefail
RUN=${1:?usage: bench-generate.sh RUN_DIR [TOKENS] [N]}
TOKENS=${2:-256}
N=${3:-5}
KILN=${KILN:-target/release/kiln}
cached=(); uncached=()
for _ in $(seq "$N"); do
    cached+=("$($KILN generate "$RUN" --max-new-tokens "$TOKENS" --seed 7 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_second"])')")
    uncached+=("$($KILN generate "$RUN" --max-new-tokens "$TOKENS" --seed 7 --no-cache --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_second"])')")
done
python3 - "$TOKENS" "${cached[*]}" "${uncached[*]}" <<'PY'
import statistics, sys
tokens, c, u = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
mc, mu = statistics.median(c), statistics.median(u)
print(f"{tokens} new tokens: KV cache {mc:.1f} tokens/s, no cache {mu:.1f} tokens/s, speed-up {mc / mu:.2f}x (medians of {len(c)})")
PY
echo "load: $(uptime)"
