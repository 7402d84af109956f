"""Grouped cross-validation of router variants (whole MMLU subjects held out).

Fold scheme: every `mmlu/<subject>` is one group; gsm8k rows (one source, also present in the
hidden set) are split at random into 5 pseudo-groups so that each fold holds out ~1/5 of gsm8k plus
~1/5 of the MMLU subjects.  GroupKFold(5, shuffle=True) with seeds 0,1,2 -> 15 folds.  Metrics are
computed inside each held-out fold; we report mean ± std over the 15 folds (and min).

    python cv.py --strategy head:128 --variants emb,lex,struct,joint
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

from common import extract_features, load_rows
from features import lexical_matrix, struct_features
from metrics import evaluate

warnings.filterwarnings("ignore")


def cv_groups(groups: np.ndarray, seed: int = 12345, n_gsm: int = 5) -> np.ndarray:
    g = groups.copy().astype(object)
    idx = np.nonzero(groups == "gsm8k")[0]
    rng = np.random.default_rng(seed)
    g[idx] = np.array([f"gsm8k_{k}" for k in rng.integers(0, n_gsm, len(idx))], dtype=object)
    return g.astype(str)


def folds(groups, seeds=(0, 1, 2), k=5):
    g = cv_groups(groups)
    for s in seeds:
        for tr, te in GroupKFold(n_splits=k, shuffle=True, random_state=s).split(g, groups=g):
            yield s, tr, te


def parse_strategy(s: str) -> dict:
    kind, *rest = s.split(":")
    if kind == "head":
        return {"strategy": "head", "max_tokens": int(rest[0])}
    return {"strategy": "head_tail", "head": int(rest[0]), "tail": int(rest[1])}


# ----------------------------------------------------------------------------- models
def lr(C, **kw):
    return LogisticRegression(C=C, max_iter=3000, **kw)


class Dense:
    """standardise + logistic regression on a dense block."""

    def __init__(self, C=0.05):
        self.C = C

    def fit(self, X, y):
        self.sc = StandardScaler().fit(X)
        self.m = lr(self.C).fit(self.sc.transform(X), y)
        return self

    def decision(self, X):
        return self.m.decision_function(self.sc.transform(X))

    def linear_form(self):
        """(w, b) with decision = X @ w + b on the raw (unscaled) X."""
        coef = self.m.coef_.ravel() / self.sc.scale_
        return coef, float(self.m.intercept_[0] - coef @ self.sc.mean_)


class Lex:
    """logistic regression on L1-normalised bag of wordpieces (optionally idf-weighted)."""

    def __init__(self, C=10.0, idf=True, min_df=2):
        self.C, self.idf, self.min_df = C, idf, min_df

    def _w(self, X):
        return X @ sp.diags(self.colw)

    def fit(self, X, y):
        df = np.asarray((X > 0).sum(0)).ravel()
        n = X.shape[0]
        self.colw = np.where(df >= self.min_df, np.log((1 + n) / (1 + df)) + 1 if self.idf else 1.0, 0.0)
        self.m = lr(self.C, solver="liblinear").fit(self._w(X), y)
        return self

    def decision(self, X):
        return self.m.decision_function(self._w(X))

    def linear_form(self):
        return self.m.coef_.ravel() * self.colw, float(self.m.intercept_[0])


class Joint:
    """One logistic model on [a*std(dense), b*idf-lex, c*std(struct)]: still exactly linear in
    (embedding, wordpiece table mean, struct), so it maps to a single in-graph head."""

    def __init__(self, C=1.0, a=0.15, b=6.0, c=0.5, idf=True):
        self.C, self.a, self.b, self.c, self.idf = C, a, b, c, idf

    def _X(self, D, L, S):
        return sp.hstack([sp.csr_matrix(self.a * self.sd.transform(D)),
                          L @ sp.diags(self.b * self.colw),
                          sp.csr_matrix(self.c * self.ss.transform(S))]).tocsr()

    def fit(self, D, L, S, y):
        self.sd = StandardScaler().fit(D)
        self.ss = StandardScaler().fit(S)
        df = np.asarray((L > 0).sum(0)).ravel()
        n = L.shape[0]
        self.colw = np.where(df >= 2, (np.log((1 + n) / (1 + df)) + 1) if self.idf else 1.0, 0.0)
        self.m = lr(self.C, solver="liblinear").fit(self._X(D, L, S), y)
        return self

    def decision(self, D, L, S):
        return self.m.decision_function(self._X(D, L, S))

    def linear_form(self):
        """(dense_w, lex_w, struct_w, bias) acting on raw D, L (counts/n), S."""
        c = self.m.coef_.ravel()
        nd, nl = self.sd.mean_.shape[0], self.colw.shape[0]
        cd, cl, cs = c[:nd], c[nd:nd + nl], c[nd + nl:]
        dw = cd * self.a / self.sd.scale_
        sw = cs * self.c / self.ss.scale_
        lw = cl * self.b * self.colw
        bias = float(self.m.intercept_[0] - dw @ self.sd.mean_ - sw @ self.ss.mean_)
        return dw, lw, sw, bias


def inner_oof(make, Xs, y, groups, k=4, seed=7):
    """out-of-fold decisions of `make()` over inner grouped folds (for stacking)."""
    out = np.zeros(len(y))
    g = cv_groups(groups, seed=seed)
    for tr, te in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(g, groups=g):
        m = make().fit(*[X[tr] for X in Xs], y[tr])
        out[te] = m.decision(*[X[te] for X in Xs])
    return out


class Stack:
    """level-1 models: Dense(emb), Lex, Dense(struct); level-2 LR on their inner-OOF logits + struct."""

    def __init__(self, C_emb=0.05, C_lex=10.0, C2=1.0, with_struct=True):
        self.C_emb, self.C_lex, self.C2, self.ws = C_emb, C_lex, C2, with_struct

    def fit(self, D, L, S, y, groups):
        mk = [lambda: Dense(self.C_emb), lambda: Lex(self.C_lex)]
        Xs = [D, L]
        Z = np.column_stack([inner_oof(m, [X], y, groups) for m, X in zip(mk, Xs)])
        self.l1 = [m().fit(X, y) for m, X in zip(mk, Xs)]
        Z2 = np.column_stack([Z, S]) if self.ws else Z
        self.sc = StandardScaler().fit(Z2)
        self.l2 = lr(self.C2).fit(self.sc.transform(Z2), y)
        return self

    def linear_form(self):
        c = self.l2.coef_.ravel() / self.sc.scale_
        b = float(self.l2.intercept_[0] - c @ self.sc.mean_)
        (dw, db), (lw, lb) = self.l1[0].linear_form(), self.l1[1].linear_form()
        sw = c[2:] if self.ws else None
        return c[0] * dw, c[1] * lw, sw, b + c[0] * db + c[1] * lb

    def decision(self, D, L, S):
        Z = np.column_stack([self.l1[0].decision(D), self.l1[1].decision(L)])
        Z2 = np.column_stack([Z, S]) if self.ws else Z
        return self.l2.decision_function(self.sc.transform(Z2))


# ----------------------------------------------------------------------------- data
def load_data(strategy: dict):
    prompts, y, weak, strong, groups = load_rows()
    f = extract_features(prompts, strategy)
    ids = f["ids"]
    data = {
        "prompts": prompts, "y": y, "weak": weak, "strong": strong, "groups": groups,
        "emb": f["embedding"], "layers": f["layer_means"], "cls": f["cls"],
        "lex": lexical_matrix(ids), "struct": struct_features(ids), "ids": ids,
    }
    return data


def dense_block(d, name):
    if name == "emb":
        return d["emb"]
    if name == "emb+cls":
        return np.hstack([d["emb"], d["cls"]])
    if name.startswith("layers"):  # layers:3,4,5,6 (index into emb(0) + l1..l6)
        idx = [int(x) for x in name.split(":")[1].split(",")]
        return np.hstack([d["emb"]] + [d["layers"][:, i] for i in idx])
    raise ValueError(name)


def run_variant(d, spec: dict, seeds=(0, 1, 2)):
    y, weak, strong, groups = d["y"], d["weak"], d["strong"], d["groups"]
    kind = spec["kind"]
    res = []
    for s, tr, te in folds(groups, seeds):
        if kind == "dense":
            X = dense_block(d, spec.get("block", "emb"))
            if spec.get("with_struct"):
                X = np.hstack([X, d["struct"]])
            m = Dense(spec.get("C", 0.05)).fit(X[tr], y[tr])
            sc = m.decision(X[te])
        elif kind == "struct":
            m = Dense(spec.get("C", 1.0)).fit(d["struct"][tr], y[tr])
            sc = m.decision(d["struct"][te])
        elif kind == "lex":
            m = Lex(spec.get("C", 10.0), spec.get("idf", True)).fit(d["lex"][tr], y[tr])
            sc = m.decision(d["lex"][te])
        elif kind == "tfidf":  # reference only (not in-graph): sklearn word TF-IDF + LR
            from sklearn.feature_extraction.text import TfidfVectorizer

            P = np.array(d["prompts"], dtype=object)
            v = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
            Xtr = v.fit_transform(P[tr])
            m = lr(spec.get("C", 1.0), solver="liblinear").fit(Xtr, y[tr])
            sc = m.decision_function(v.transform(P[te]))
        elif kind == "joint":
            D = dense_block(d, spec.get("block", "emb"))
            kw = {k: spec[k] for k in ("C", "a", "b", "c", "idf") if k in spec}
            m = Joint(**kw).fit(D[tr], d["lex"][tr], d["struct"][tr], y[tr])
            sc = m.decision(D[te], d["lex"][te], d["struct"][te])
        elif kind == "stack":
            D = dense_block(d, spec.get("block", "emb"))
            kw = {k: spec[k] for k in ("C_emb", "C_lex", "C2", "with_struct") if k in spec}
            m = Stack(**kw).fit(D[tr], d["lex"][tr], d["struct"][tr], y[tr], groups[tr])
            sc = m.decision(D[te], d["lex"][te], d["struct"][te])
        else:
            raise ValueError(kind)
        r = evaluate(sc, weak[te], strong[te])
        r["seed"] = s
        res.append(r)
    return summarize(res)


def summarize(res):
    out = {}
    for k in ("apgr", "cpt50", "auroc_weak_fail"):
        v = np.array([r[k] for r in res])
        out[k] = {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4),
                  "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}
    out["n_folds"] = len(res)
    return out


def fmt(name, s):
    a, c, u = s["apgr"], s["cpt50"], s["auroc_weak_fail"]
    return (f"{name:55s} APGR {a['mean']:.4f} ± {a['std']:.4f} (min {a['min']:.3f})  "
            f"CPT50 {100*c['mean']:.1f}% ± {100*c['std']:.1f}  AUROC {u['mean']:.4f} ± {u['std']:.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", default="head:128")
    ap.add_argument("--specs", required=True, help="JSON list of variant specs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    a = ap.parse_args()
    st = parse_strategy(a.strategy)
    d = load_data(st)
    seeds = tuple(int(x) for x in a.seeds.split(","))
    for spec in json.loads(a.specs):
        t = time.time()
        s = run_variant(d, spec, seeds)
        print(fmt(f"[{a.strategy}] {json.dumps(spec)}", s), f"({time.time()-t:.0f}s)", flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(json.dumps({"strategy": a.strategy, "spec": spec, "seeds": seeds, **s}) + "\n")


# ----------------------------------------------------------------------------- generic linear head
class Head:
    """Linear head on [a*std(D), b*idf*L, c*std(S)] (any block optional).

    target="gain": ridge regression on strong_correct - weak_correct (expected benefit of the cloud,
    which is what APGR rewards); target="weakfail": logistic regression on weak_correct == false.
    Exactly linear in (D, L = wordpiece counts / n, S) -> folds into the in-graph head.
    """

    def __init__(self, target="gain", alpha=3000.0, C=0.05, use_dense=True, use_lex=False,
                 use_struct=True, a=1.0, b=1.0, c=1.0, idf=True):
        self.target, self.alpha, self.C = target, alpha, C
        self.ud, self.ul, self.us, self.a, self.b, self.c, self.idf = use_dense, use_lex, use_struct, a, b, c, idf

    def _X(self, D, L, S):
        bl = []
        if self.ud:
            bl.append(self.a * self.sd.transform(D))
        if self.us:
            bl.append(self.c * self.ss.transform(S))
        X = np.hstack(bl) if bl else np.zeros((L.shape[0], 0))
        if self.ul:
            return sp.hstack([sp.csr_matrix(X), L @ sp.diags(self.b * self.colw)]).tocsr()
        return X

    def fit(self, D, L, S, y, gain):
        from sklearn.linear_model import Ridge

        self.sd = StandardScaler().fit(D)
        self.ss = StandardScaler().fit(S)
        df = np.asarray((L > 0).sum(0)).ravel()
        n = L.shape[0]
        self.colw = np.where(df >= 2, (np.log((1 + n) / (1 + df)) + 1) if self.idf else 1.0, 0.0)
        X = self._X(D, L, S)
        if self.target == "gain":
            self.m = Ridge(alpha=self.alpha, solver="sparse_cg" if sp.issparse(X) else "auto",
                           tol=1e-6, max_iter=5000).fit(X, gain)
            self._coef, self._int = self.m.coef_.ravel(), float(self.m.intercept_)
        else:
            self.m = lr(self.C, solver="liblinear" if sp.issparse(X) else "lbfgs").fit(X, y)
            self._coef, self._int = self.m.coef_.ravel(), float(self.m.intercept_[0])
        return self

    def decision(self, D, L, S):
        return self._X(D, L, S) @ self._coef + self._int

    def linear_form(self):
        """(dense_w, lex_w, struct_w, bias) acting on raw D, L, S (None for unused blocks)."""
        c, k, bias = self._coef, 0, self._int
        dw = lw = sw = None
        if self.ud:
            nd = self.sd.mean_.shape[0]
            dw = c[k:k + nd] * self.a / self.sd.scale_
            bias -= float(dw @ self.sd.mean_)
            k += nd
        if self.us:
            ns = self.ss.mean_.shape[0]
            sw = c[k:k + ns] * self.c / self.ss.scale_
            bias -= float(sw @ self.ss.mean_)
            k += ns
        if self.ul:
            lw = c[k:] * self.b * self.colw
        return dw, lw, sw, bias


def run_head(d, spec, seeds=(0, 1, 2), scheme="group", return_oof=False):
    """spec: Head kwargs + optional "block" (dense block name)."""
    y, weak, strong, groups = d["y"], d["weak"], d["strong"], d["groups"]
    gain = strong - weak
    D = dense_block(d, spec.get("block", "emb"))
    kw = {k: v for k, v in spec.items() if k not in ("block", "kind")}
    res, oof = [], np.zeros(len(y))
    if scheme == "group":
        it = folds(groups, seeds)
    else:  # random rows, stratified on source (seen-subject setting)
        from sklearn.model_selection import StratifiedKFold

        it = ((s, tr, te) for s in seeds
              for tr, te in StratifiedKFold(5, shuffle=True, random_state=s).split(D, groups))
    for s, tr, te in it:
        m = Head(**kw).fit(D[tr], d["lex"][tr], d["struct"][tr], y[tr], gain[tr])
        sc = m.decision(D[te], d["lex"][te], d["struct"][te])
        res.append(evaluate(sc, weak[te], strong[te]))
        if s == seeds[0]:
            oof[te] = sc
    out = summarize(res)
    out["pooled_seed0"] = {k: round(v, 4) for k, v in evaluate(oof, weak, strong).items()}
    return (out, oof) if return_oof else out
