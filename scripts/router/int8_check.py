"""Does int8 quantization change routing quality?  Grouped CV (seed 0, 5 folds) with heads trained
on fp32 features, evaluated on the held-out rows of a 1-in-4 sample with (a) fp32 features and
(b) features from the int8-quantized encoder (same SmoothQuant + quantize_dynamic settings as router.onnx,
batch 1, no padding, like the runtime).

    HF_HUB_OFFLINE=1 nice -n 10 python scripts/router/int8_check.py [--write]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_router import REPO, SPEC, decide, fit, make_model, smooth_factors  # noqa: E402
from common import CACHE, make_session  # noqa: E402
from cv import folds, load_data  # noqa: E402
from metrics import evaluate  # noqa: E402
from minilm_graph import build_feature_model, load_weights  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    spec = SPEC
    d = load_data(spec["truncation"])
    sample = np.arange(0, len(d["y"]), 4)
    f = CACHE / f"int8_feats_sample_sq{spec['smoothquant_alpha']}.npz"
    if f.exists():
        q = dict(np.load(f))
    else:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as td:
            sm = smooth_factors(spec, d["prompts"])
            onnx.save(build_feature_model(load_weights(), sm), f"{td}/f.onnx")
            quantize_dynamic(f"{td}/f.onnx", f"{td}/q.onnx", per_channel=True, weight_type=QuantType.QInt8)
            sess = make_session(f"{td}/q.onnx", 2)
            outs = {"embedding": [], "layer_means": []}
            for i in sample:
                x = np.array([d["ids"][i]], np.int64)
                e, lm = sess.run(["embedding", "layer_means"], {"input_ids": x, "attention_mask": np.ones_like(x)})
                outs["embedding"].append(e[0])
                outs["layer_means"].append(lm[0])
        q = {k: np.stack(v) for k, v in outs.items()}
        np.savez(f, **q)
    dq = dict(d)
    dq["emb"] = d["emb"].copy()
    dq["layers"] = d["layers"].copy()
    dq["emb"][sample] = q["embedding"]
    dq["layers"][sample] = q["layer_means"]
    insample = np.zeros(len(d["y"]), bool)
    insample[sample] = True
    s32, s8, ys = [], [], []
    per = []
    for s, tr, te in folds(d["groups"], seeds=(0,)):
        m = fit(make_model(spec["model"]), d, tr, spec["model"])
        te = te[insample[te]]
        z32, z8 = decide(m, d, te, spec["model"]), decide(m, dq, te, spec["model"])
        per.append({"fp32": evaluate(z32, d["weak"][te], d["strong"][te]),
                    "int8": evaluate(z8, d["weak"][te], d["strong"][te]),
                    "corr": float(np.corrcoef(z32, z8)[0, 1])})
        s32.append(z32), s8.append(z8), ys.append(te)
    te = np.concatenate(ys)
    z32, z8 = np.concatenate(s32), np.concatenate(s8)
    res = {"n": int(len(te)), "scheme": "grouped 5-fold seed 0, held-out rows of a 1-in-4 sample",
           "pooled_fp32": {k: round(v, 4) for k, v in evaluate(z32, d["weak"][te], d["strong"][te]).items()},
           "pooled_int8": {k: round(v, 4) for k, v in evaluate(z8, d["weak"][te], d["strong"][te]).items()},
           "per_fold_apgr_fp32": [round(p["fp32"]["apgr"], 4) for p in per],
           "per_fold_apgr_int8": [round(p["int8"]["apgr"], 4) for p in per],
           "score_corr_fp32_int8": round(float(np.corrcoef(z32, z8)[0, 1]), 5),
           "embedding_cos_int8_vs_fp32": {"mean": round(float((q["embedding"] * d["emb"][sample]).sum(1).mean()), 4),
                                          "min": round(float((q["embedding"] * d["emb"][sample]).sum(1).min()), 4)}}
    print(json.dumps(res, indent=1))
    if a.write:
        p = REPO / "runtime/router/router.json"
        info = json.load(open(p))
        info["int8_check"] = res
        json.dump(info, open(p, "w"), indent=1)


if __name__ == "__main__":
    main()
