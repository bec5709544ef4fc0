#!/usr/bin/env python3
"""Talks to `kiln serve` with Triton's own HTTP client (`tritonclient[http]`, unmodified).

1. Server: live, ready, metadata; the model repository index lists every model.
2. Each model: ready, metadata; inference on its ONNX export's reference inputs
   (test_data_set_0, written by `kiln export`) with tritonclient's defaults (binary tensors)
   and with JSON tensors; outputs must equal kiln's reference outputs within --tol.
3. With --idx IMAGES --predict P.csv --model M: the first rows of an IDX image file sent as
   `pixels` give the same probabilities as `kiln predict --proba` wrote for those rows.
4. With --embedder NAME --texts T.csv --embeddings E.npy: the texts of T.csv's `text` column
   sent as a BYTES tensor (binary and JSON) give the embeddings `kiln embed` wrote to E.npy.

Needs: pip install "tritonclient[http]" onnx numpy
Usage: scripts/check-triton.py --url 127.0.0.1:8000 NAME=EXPORT_DIR... [--idx F --predict P --model M]
       [--embedder NAME --texts T.csv --embeddings E.npy]
"""
import argparse
import csv
import glob
import gzip
import os
import sys

import numpy as np
import onnx
import tritonclient.http as httpclient
from onnx import numpy_helper


def tensors(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        t = onnx.TensorProto()
        with open(path, "rb") as f:
            t.ParseFromString(f.read())
        out.append((t.name, numpy_helper.to_array(t)))
    return out


def infer(client, model, inputs, binary):
    ins = []
    for name, value in inputs:
        dtype = "FP32" if value.dtype == np.float32 else "INT64"
        i = httpclient.InferInput(name, list(value.shape), dtype)
        i.set_data_from_numpy(value, binary_data=binary)
        ins.append(i)
    if binary:
        return client.infer(model, ins)  # tritonclient's default: binary outputs
    meta = client.get_model_metadata(model)
    outs = [httpclient.InferRequestedOutput(o["name"], binary_data=False) for o in meta["outputs"]]
    return client.infer(model, ins, outputs=outs)


def read_idx(path, rows):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, h, w)
    return pixels[:rows].astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("models", nargs="+", help="NAME=EXPORT_DIR")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--idx")
    p.add_argument("--predict")
    p.add_argument("--model")
    p.add_argument("--embedder")
    p.add_argument("--texts")
    p.add_argument("--embeddings")
    a = p.parse_args()
    client = httpclient.InferenceServerClient(url=a.url)
    assert client.is_server_live() and client.is_server_ready(), "server not live/ready"
    server = client.get_server_metadata()
    listed = sorted(m["name"] for m in client.get_model_repository_index())
    names = sorted([m.split("=", 1)[0] for m in a.models] + ([a.embedder] if a.embedder else []))
    assert listed == names, f"repository index {listed}, expected {names}"
    print(f"ok  server {server['name']} {server['version']}: lists {listed}")
    for spec in a.models:
        name, export = spec.split("=", 1)
        assert client.is_model_ready(name), f"{name} not ready"
        meta = client.get_model_metadata(name)
        inputs = tensors(os.path.join(export, "test_data_set_0", "input_*.pb"))
        expected = tensors(os.path.join(export, "test_data_set_0", "output_*.pb"))
        worst = 0.0
        for binary in (True, False):
            result = infer(client, name, inputs, binary)
            for out_name, want in expected:
                got = result.as_numpy(out_name)
                assert got.shape == want.shape, f"{name}/{out_name}: shape {got.shape} vs {want.shape}"
                diff = float(np.max(np.abs(got - want)))
                worst = max(worst, diff)
                assert diff <= a.tol, f"{name}/{out_name} ({'binary' if binary else 'JSON'}): differs by {diff}"
        print(f"ok  {name} ({meta['platform']}): inputs {[i['name'] for i in meta['inputs']]}, "
              f"binary and JSON outputs equal kiln's within {worst:.2e}")
    if a.idx:
        with open(a.predict) as f:
            rows = list(csv.DictReader(f))
        pixels = read_idx(a.idx, len(rows))
        result = infer(client, a.model, [("pixels", pixels)], True)
        probs = result.as_numpy("probabilities")
        classes = [c[len("proba_"):] for c in rows[0] if c.startswith("proba_")]
        want = np.array([[float(r["proba_" + c]) for c in classes] for r in rows], dtype=np.float32)
        diff = float(np.max(np.abs(probs - want)))
        assert diff <= 1e-5, f"tritonclient vs kiln predict: {diff}"
        print(f"ok  {a.model}: {len(rows)} IDX rows through tritonclient equal `kiln predict --proba` (max diff {diff:.2e}, "
              f"predict rounds to 6 decimals)")
    if a.embedder:
        with open(a.texts, encoding="utf-8") as f:
            texts = [r["text"] for r in csv.DictReader(f)]
        want = np.load(a.embeddings)
        meta = client.get_model_metadata(a.embedder)
        assert meta["inputs"][0]["datatype"] == "BYTES", meta
        worst = 0.0
        for binary in (True, False):
            i = httpclient.InferInput("text", [len(texts)], "BYTES")
            i.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_),
                                  binary_data=binary)
            out = [httpclient.InferRequestedOutput("embedding", binary_data=binary)]
            got = client.infer(a.embedder, [i], outputs=out).as_numpy("embedding")
            assert got.shape == want.shape, f"embedding shape {got.shape} vs {want.shape}"
            worst = max(worst, float(np.max(np.abs(got - want))))
        assert worst <= 1e-6, f"embeddings through tritonclient differ from kiln embed by {worst}"
        print(f"ok  {a.embedder} ({meta['platform']}): {len(texts)} texts as BYTES, binary and JSON, "
              f"equal `kiln embed` within {worst:.2e}")
    print("tritonclient: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}")
        sys.exit(1)
