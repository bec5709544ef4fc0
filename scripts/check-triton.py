#!/usr/bin/env python3
"""Talks to `kiln serve` with Triton's own clients, unmodified: HTTP (`tritonclient[http]`)
and, with --grpc-url, gRPC (`tritonclient[grpc]`), each making every check below.

1. Server: live, ready, metadata; the model repository index lists every model.
2. Each model: ready, metadata; inference on its ONNX export's reference inputs
   (test_data_set_0, written by `kiln export`) with tritonclient's defaults (binary tensors)
   and with JSON tensors; outputs must equal kiln's reference outputs within --tol.
3. With --idx IMAGES --predict P.csv --model M: the first rows of an IDX image file sent as
   `pixels` give the same probabilities as `kiln predict --proba` wrote for those rows.
4. With --embedder NAME --texts T.csv --embeddings E.npy: the texts of T.csv's `text` column
   sent as a BYTES tensor (binary and JSON) give the embeddings `kiln embed` wrote to E.npy.

Over gRPC, tensors always travel as raw bytes (tritonclient.grpc has no JSON form).

Needs: pip install "tritonclient[http,grpc]" onnx numpy
Usage: scripts/check-triton.py --url 127.0.0.1:8000 [--grpc-url 127.0.0.1:8001] NAME=EXPORT_DIR...
       [--idx F --predict P --model M] [--embedder NAME --texts T.csv --embeddings E.npy]
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


class Http:
    """tritonclient.http, with binary (its default) and JSON tensors."""

    name = "HTTP"
    encodings = (True, False)

    def __init__(self, url):
        self.client = httpclient.InferenceServerClient(url=url)

    def __getattr__(self, attr):
        return getattr(self.client, attr)

    def server_metadata(self):
        return self.client.get_server_metadata()

    def model_metadata(self, model):
        return self.client.get_model_metadata(model)

    def repository(self):
        return self.client.get_model_repository_index()

    def infer(self, model, inputs, binary, outputs=None):
        ins = []
        for name, value, dtype in inputs:
            i = httpclient.InferInput(name, list(value.shape), dtype)
            i.set_data_from_numpy(value, binary_data=binary)
            ins.append(i)
        if outputs is None and binary:
            return self.client.infer(model, ins)  # tritonclient's default: binary outputs
        if outputs is None:
            outputs = [o["name"] for o in self.model_metadata(model)["outputs"]]
        outs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        return self.client.infer(model, ins, outputs=outs)


class Grpc:
    """tritonclient.grpc: tensors as raw bytes."""

    name = "gRPC"
    encodings = (True,)

    def __init__(self, url):
        import tritonclient.grpc as grpcclient
        self.module = grpcclient
        self.client = grpcclient.InferenceServerClient(url=url)

    def __getattr__(self, attr):
        return getattr(self.client, attr)

    def server_metadata(self):
        return self.client.get_server_metadata(as_json=True)

    def model_metadata(self, model):
        meta = self.client.get_model_metadata(model, as_json=True)
        for t in meta["inputs"] + meta["outputs"]:
            t["shape"] = [int(d) for d in t["shape"]]
        return meta

    def repository(self):
        return self.client.get_model_repository_index(as_json=True)["models"]

    def infer_typed_contents(self, model, inputs):
        """ModelInfer with the tensors as typed `contents` instead of raw bytes, through the
        client's own generated stub; the outputs as numpy arrays by name."""
        from tritonclient.grpc import service_pb2
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, value, dtype in inputs:
            t = request.inputs.add(name=name, datatype=dtype, shape=list(value.shape))
            if dtype == "FP32":
                t.contents.fp32_contents.extend(value.flatten().tolist())
            else:
                t.contents.int64_contents.extend(value.flatten().tolist())
        response = self.client._client_stub.ModelInfer(request)
        return {o.name: np.frombuffer(raw, dtype=np.float32).reshape(list(o.shape))
                for o, raw in zip(response.outputs, response.raw_output_contents)}

    def infer(self, model, inputs, binary, outputs=None):
        ins = []
        for name, value, dtype in inputs:
            i = self.module.InferInput(name, list(value.shape), dtype)
            i.set_data_from_numpy(value)
            ins.append(i)
        outs = None if outputs is None else [self.module.InferRequestedOutput(o) for o in outputs]
        return self.client.infer(model, ins, outputs=outs)


def typed(inputs):
    return [(n, v, "FP32" if v.dtype == np.float32 else "INT64") for n, v in inputs]


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
    p.add_argument("--grpc-url")
    a = p.parse_args()
    clients = [Http(a.url)] + ([Grpc(a.grpc_url)] if a.grpc_url else [])
    for client in clients:
        check(client, a)
    print("tritonclient: all checks passed" + (" (HTTP and gRPC)" if a.grpc_url else ""))


def check(client, a):
    via = client.name
    assert client.is_server_live() and client.is_server_ready(), f"{via}: server not live/ready"
    server = client.server_metadata()
    listed = sorted(m["name"] for m in client.repository())
    names = sorted([m.split("=", 1)[0] for m in a.models] + ([a.embedder] if a.embedder else []))
    assert listed == names, f"{via}: repository index {listed}, expected {names}"
    print(f"ok  {via} server {server['name']} {server['version']}: lists {listed}")
    for spec in a.models:
        name, export = spec.split("=", 1)
        assert client.is_model_ready(name), f"{via}: {name} not ready"
        meta = client.model_metadata(name)
        inputs = tensors(os.path.join(export, "test_data_set_0", "input_*.pb"))
        expected = tensors(os.path.join(export, "test_data_set_0", "output_*.pb"))
        worst = 0.0
        for binary in client.encodings:
            result = client.infer(name, typed(inputs), binary)
            for out_name, want in expected:
                got = result.as_numpy(out_name)
                assert got.shape == want.shape, f"{via} {name}/{out_name}: shape {got.shape} vs {want.shape}"
                diff = float(np.max(np.abs(got - want)))
                worst = max(worst, diff)
                assert diff <= a.tol, f"{via} {name}/{out_name} ({'binary' if binary else 'JSON'}): differs by {diff}"
        if via == "gRPC":
            got = client.infer_typed_contents(name, typed(inputs))
            for out_name, want in expected:
                diff = float(np.max(np.abs(got[out_name] - want)))
                worst = max(worst, diff)
                assert diff <= a.tol, f"gRPC {name}/{out_name} (typed contents): differs by {diff}"
        print(f"ok  {via} {name} ({meta['platform']}): inputs {[i['name'] for i in meta['inputs']]}, "
              f"{' and '.join('binary' if b else 'JSON' for b in client.encodings)}"
              f"{' and typed-contents' if via == 'gRPC' else ''} outputs equal kiln's within {worst:.2e}")
    # Errors arrive as the protocol's errors, naming what is wrong.
    first, export = a.models[0].split("=", 1)
    inputs = typed(tensors(os.path.join(export, "test_data_set_0", "input_*.pb")))
    for model, bad, phrase in [
        ("no-such-model", inputs, "unknown model"),
        (first, [(n, v[..., :1] if v.ndim > 1 else v, d) for n, v, d in inputs], "shape"),
    ]:
        try:
            client.infer(model, bad, True)
        except Exception as e:  # tritonclient's InferenceServerException
            assert phrase in str(e), f"{via}: error for {model}: {e}"
        else:
            raise AssertionError(f"{via}: a bad request to {model} succeeded")
    print(f"ok  {via}: an unknown model and a wrong shape are errors that say so")
    if a.idx:
        with open(a.predict) as f:
            rows = list(csv.DictReader(f))
        pixels = read_idx(a.idx, len(rows))
        result = client.infer(a.model, [("pixels", pixels, "FP32")], True)
        probs = result.as_numpy("probabilities")
        classes = [c[len("proba_"):] for c in rows[0] if c.startswith("proba_")]
        want = np.array([[float(r["proba_" + c]) for c in classes] for r in rows], dtype=np.float32)
        diff = float(np.max(np.abs(probs - want)))
        assert diff <= 1e-5, f"{via}: tritonclient vs kiln predict: {diff}"
        print(f"ok  {via} {a.model}: {len(rows)} IDX rows through tritonclient equal `kiln predict --proba` (max diff {diff:.2e}, "
              f"predict rounds to 6 decimals)")
    if a.embedder:
        with open(a.texts, encoding="utf-8") as f:
            texts = [r["text"] for r in csv.DictReader(f)]
        want = np.load(a.embeddings)
        meta = client.model_metadata(a.embedder)
        assert meta["inputs"][0]["datatype"] == "BYTES", meta
        worst = 0.0
        for binary in client.encodings:
            data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
            got = client.infer(a.embedder, [("text", data, "BYTES")], binary,
                               outputs=["embedding"]).as_numpy("embedding")
            assert got.shape == want.shape, f"{via}: embedding shape {got.shape} vs {want.shape}"
            worst = max(worst, float(np.max(np.abs(got - want))))
        assert worst <= 1e-6, f"{via}: embeddings through tritonclient differ from kiln embed by {worst}"
        print(f"ok  {via} {a.embedder} ({meta['platform']}): {len(texts)} texts as BYTES, "
              f"{' and '.join('binary' if b else 'JSON' for b in client.encodings)}, equal `kiln embed` within {worst:.2e}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}")
        sys.exit(1)
