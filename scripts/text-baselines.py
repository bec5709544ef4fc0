#!/usr/bin/env python3
"""Bag-of-n-grams baselines for the text examples (scikit-learn TF-IDF + logistic
regression), to put kiln's from-scratch transformers in context. Not part of the product.

    pip install scikit-learn && python3 scripts/text-baselines.py

Splits are stratified, test share as in the kiln examples (spam 20 %, sentiment 10 %), but
drawn by scikit-learn's generator, so the test rows differ from kiln's.
"""
import csv
import sys

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

csv.field_size_limit(sys.maxsize)


def load(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def run(name, path, test, analyzer, ngrams, positive=None):
    texts, labels = load(path)
    xtr, xte, ytr, yte = train_test_split(
        texts, labels, test_size=test, random_state=0, stratify=labels
    )
    vec = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=2)
    model = LogisticRegression(C=4, max_iter=2000).fit(vec.fit_transform(xtr), ytr)
    pred = model.predict(vec.transform(xte))
    line = f"{name}: {analyzer} {ngrams} TF-IDF + logistic regression: accuracy {accuracy_score(yte, pred):.4f}"
    if positive:
        line += f", F1({positive}) {f1_score(yte, pred, pos_label=positive):.4f}"
    print(line, f"({len(yte)} test rows)")


run("spam", "data/spam.csv", 0.2, "word", (1, 1), positive="spam")
run("sentiment", "data/sentiment.csv", 0.1, "char", (1, 1))
run("sentiment", "data/sentiment.csv", 0.1, "char", (1, 2))
