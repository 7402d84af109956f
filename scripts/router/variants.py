"""Reproduces the variant table in scripts/router/README.md, "Variants" (grouped CV and, for
reference, random-row CV).

    HF_HUB_OFFLINE=1 nice -n 10 python scripts/router/variants.py [--quick] > variants.txt

Writes JSON lines to $ROUTER_CACHE/variants.jsonl and prints one line per variant.
All variants use frozen all-MiniLM-L6-v2 features (fp32) from common.extract_features.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sklearn.linear_model import Ridge  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from common import CACHE  # noqa: E402
from cv import dense_block, fmt, folds, load_data, parse_strategy, run_head, run_variant, summarize  # noqa: E402
from metrics import evaluate  # noqa: E402

BEST = {"alpha": 60000, "block": "layers:1,2,3,4,5,6"}


def it_folds(d, scheme, seeds=(0, 1, 2)):
    if scheme == "group":
        return folds(d["groups"], seeds)
    return ((s, tr, te) for s in seeds
            for tr, te in StratifiedKFold(5, shuffle=True, random_state=s).split(d["emb"], d["groups"]))


def random_router(d, scheme):
    rng = np.random.default_rng(0)
    return summarize([evaluate(rng.random(len(te)), d["weak"][te], d["strong"][te])
                      for _, _, te in it_folds(d, scheme)])


def blend(d, scheme, lam):
    """ridge P(weak fails) - lam * ridge P(strong fails) on the BEST features (lam=1 == gain)."""
    X = np.hstack([dense_block(d, BEST["block"]), d["struct"]])
    res = []
    for _, tr, te in it_folds(d, scheme):
        sc = StandardScaler().fit(X[tr])
        a, b = sc.transform(X[tr]), sc.transform(X[te])
        pw = Ridge(alpha=BEST["alpha"]).fit(a, 1 - d["weak"][tr]).predict(b)
        ps = Ridge(alpha=BEST["alpha"]).fit(a, 1 - d["strong"][tr]).predict(b)
        res.append(evaluate(pw - lam * ps, d["weak"][te], d["strong"][te]))
    return summarize(res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the slow sparse weak-fail baselines")
    ap.add_argument("--merge", action="store_true",
                    help="only copy $ROUTER_CACHE/variants.jsonl into runtime/router/router.json['variants_cv']")
    a = ap.parse_args()
    out = CACHE / "variants.jsonl"
    if a.merge:
        rj = Path(__file__).resolve().parents[2] / "runtime/router/router.json"
        info = json.load(open(rj))
        rows = [json.loads(l) for l in open(out)]
        info["variants_cv"] = [{"name": r["name"], "truncation": r["strategy"], "scheme": r["scheme"],
                                "apgr_mean": r["apgr"]["mean"], "apgr_std": r["apgr"]["std"],
                                "apgr_min": r["apgr"]["min"], "cpt50_mean": r["cpt50"]["mean"],
                                "cpt50_std": r["cpt50"]["std"], "auroc_weak_fail_mean": r["auroc_weak_fail"]["mean"],
                                "n_folds": r["n_folds"]} for r in rows]
        json.dump(info, open(rj, "w"), indent=1)
        return

    def emit(name, strategy, scheme, s):
        print(fmt(f"[{strategy}|{scheme}] {name}", s), flush=True)
        with open(out, "a") as fh:
            fh.write(json.dumps({"name": name, "strategy": strategy, "scheme": scheme, **s}) + "\n")

    d = load_data(parse_strategy("head:128"))
    for scheme in ("group", "random"):
        t = time.time()
        emit("random scores", "head:128", scheme, random_router(d, scheme))
        # weak-fail (classification of weak_correct == false) baselines
        if scheme == "group":
            emit("weakfail LR emb", "head:128", scheme, run_variant(d, {"kind": "dense", "C": 0.05}))
            emit("weakfail LR struct", "head:128", scheme, run_variant(d, {"kind": "struct"}))
            if not a.quick:
                emit("weakfail LR bag-of-wordpieces (in-graph table)", "head:128", scheme,
                     run_variant(d, {"kind": "lex", "C": 10}))
                emit("weakfail word TF-IDF(1-2g)+LR (not in-graph, reference)", "head:128", scheme,
                     run_variant(d, {"kind": "tfidf", "C": 1}))
        else:
            emit("weakfail LR emb", "head:128", scheme,
                 run_head(d, {"target": "weakfail", "C": 0.05, "use_struct": False}, scheme=scheme))
        # gain target (ridge on strong_correct - weak_correct)
        for name, spec in [
            ("gain ridge struct only (a=3000)", {"alpha": 3000, "use_dense": False}),
            ("gain ridge emb only (a=3000)", {"alpha": 3000, "use_struct": False}),
            ("gain ridge emb+struct (a=10000)", {"alpha": 10000}),
            ("gain ridge emb+struct+bag-of-wordpieces (a=10000,b=30)", {"alpha": 10000, "use_lex": True, "b": 30.0}),
            ("gain ridge emb+CLS+struct (a=10000)", {"alpha": 10000, "block": "emb+cls"}),
            ("gain ridge emb+layers3-6+struct (a=30000)", {"alpha": 30000, "block": "layers:3,4,5,6"}),
            ("gain ridge emb+layers1-6+struct (a=60000) [SHIPPED features]", BEST),
            ("gain ridge emb+layers1-6+struct+bag-of-wordpieces (a=30000,b=30)",
             {"alpha": 30000, "block": "layers:1,2,3,4,5,6", "use_lex": True, "b": 30.0}),
        ]:
            if scheme == "random" and "wordpieces" in name and a.quick:
                continue
            emit(name, "head:128", scheme, run_head(d, spec, scheme=scheme))
        for lam in (0.0, 0.5, 0.8, 0.9, 1.0):
            emit(f"blend ridge P(wf) - {lam}*P(sf), layers1-6+struct", "head:128", scheme, blend(d, scheme, lam))
        print(f"# {scheme} done in {time.time()-t:.0f}s", flush=True)
    # truncation trade-off for the shipped head
    for st in ("head:128", "head_tail:94:32", "head:256", "head:512"):
        dd = load_data(parse_strategy(st))
        for scheme in ("group", "random"):
            emit("SHIPPED head (gain ridge emb+layers1-6+struct, a=60000)", st, scheme, run_head(dd, BEST, scheme=scheme))


if __name__ == "__main__":
    main()
