#!/usr/bin/env python3
"""Checks `kiln export --format onnx` directories with the ONNX reference tools.

For each export directory: `onnx.checker.check_model(full_check=True)` (structure and shape
inference), then onnxruntime runs `model.onnx` on `test_data_set_0/input_*.pb` and every
output must equal kiln's own `output_*.pb` within the tolerance (default 1e-4, absolute).
Also checks the dynamic axes: the first row alone, and for a GPT a prefix of the tokens.

Needs: pip install onnx onnxruntime numpy
Usage: scripts/check-onnx.py EXPORT_DIR... [--tol 1e-4]
"""
import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def load_tensors(pattern):
    out = {}
    for path in sorted(glob.glob(pattern)):
        t = onnx.TensorProto()
        with open(path, "rb") as f:
            t.ParseFromString(f.read())
        out[t.name] = numpy_helper.to_array(t)
    return out


def check(export_dir, tol):
    model_path = os.path.join(export_dir, "model.onnx")
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    data = os.path.join(export_dir, "test_data_set_0")
    inputs = load_tensors(os.path.join(data, "input_*.pb"))
    expected = load_tensors(os.path.join(data, "output_*.pb"))
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, inputs)))
    worst = 0.0
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            raise AssertionError(f"{export_dir}: {name} has shape {have.shape}, kiln {want.shape}")
        diff = float(np.max(np.abs(have - want))) if want.size else 0.0
        worst = max(worst, diff)
        if not diff <= tol:
            raise AssertionError(f"{export_dir}: {name} differs from kiln by {diff:.3g} > {tol}")
    # Dynamic batch axis: one row alone gives that row's outputs.
    single = {k: v[:1] for k, v in inputs.items()}
    one = dict(zip(names, session.run(names, single)))
    for name, want in expected.items():
        diff = float(np.max(np.abs(one[name] - want[:1])))
        if not diff <= tol:
            raise AssertionError(f"{export_dir}: batch of one: {name} differs by {diff:.3g}")
    # Dynamic sequence axis (GPT): a causal model's logits for a prefix are the prefix of its
    # logits.
    if meta.get("kiln.kind") == "gpt":
        t = inputs["tokens"].shape[1] // 2
        (prefix,) = session.run(["logits"], {"tokens": inputs["tokens"][:, :t]})
        diff = float(np.max(np.abs(prefix - expected["logits"][:, :t])))
        if not diff <= tol:
            raise AssertionError(f"{export_dir}: {t}-token prefix: logits differ by {diff:.3g}")
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
    print(f"ok  {export_dir}: kind={meta.get('kiln.kind')} nodes={len(model.graph.node)} "
          f"inputs: {shapes}; max |onnxruntime - kiln| = {worst:.2e}")
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+")
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    failed = 0
    for d in a.dirs:
        try:
            check(d, a.tol)
        except Exception as e:  # report every directory, then fail
            failed += 1
            print(f"FAIL {d}: {e}")
    print(f"onnx: onnx {onnx.__version__}, onnxruntime {ort.__version__}: "
          f"{len(a.dirs) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
