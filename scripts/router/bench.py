"""Latency of router.onnx with ONNX Runtime on ONE thread (batch 1, all-ones mask).

    nice -n 10 python scripts/router/bench.py [--model runtime/router/router.onnx] [--write]

Reports p50/p99 over N runs (after warm-up) at 16/128/256/512 tokens; --write stores the figures
in router.json["latency"].
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]


def bench(model, lengths=(16, 128, 256, 512), n=300, warm=30):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    res = {}
    for L in lengths:
        ids = rng.integers(1000, 30000, size=(1, L)).astype(np.int64)
        ids[0, 0], ids[0, -1] = 101, 102
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        for _ in range(warm):
            sess.run(None, feed)
        t = []
        for _ in range(n if L <= 256 else max(n // 3, 100)):
            t0 = time.perf_counter()
            sess.run(None, feed)
            t.append((time.perf_counter() - t0) * 1000)
        t = np.array(t)
        res[str(L)] = {"p50_ms": round(float(np.percentile(t, 50)), 2),
                       "p99_ms": round(float(np.percentile(t, 99)), 2), "runs": len(t)}
        print(L, res[str(L)], flush=True)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "runtime/router/router.onnx"))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    r = bench(a.model)
    if a.write:
        p = Path(a.model).parent / "router.json"
        info = json.load(open(p))
        info["latency"] = {"runtime": f"onnxruntime {ort.__version__}, 1 intra-op thread, batch 1, "
                                      "ORT_ENABLE_ALL, 2-core x86_64 build machine",
                           "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                           "model_sha256": info["sha256"]["router.onnx"], "tokens": r}
        json.dump(info, open(p, "w"), indent=1)
