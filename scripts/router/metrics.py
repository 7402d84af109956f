"""RouteLLM-style routing metrics: APGR and CPT(x%).

For a router score s (higher = more likely to need the cloud), sweep the threshold over every
distinct score value.  At each threshold t, prompts with s >= t go to the cloud (strong model) and
the rest stay local (weak model); accuracy = mean(strong_correct if cloud else weak_correct).
x-axis = share of prompts sent to the cloud (0..1).  Ties are routed together (one curve point per
distinct score), and the curve includes the endpoints (0, weak_acc) and (1, strong_acc).

    APGR = (AUC(router) - weak_acc) / (strong_acc - weak_acc)     (trapezoidal AUC over x in [0,1];
           the all-weak and all-strong curves are the constants weak_acc and strong_acc, as in
           RouteLLM's evaluate.py which integrates them with np.trapz over the same x range)
    CPT(p) = smallest cloud share whose accuracy >= weak_acc + p * (strong_acc - weak_acc).

This follows lm-sys/RouteLLM routellm/evals/evaluate.py, with a dense threshold sweep instead of a
fixed number of quantile thresholds (the dense sweep is the limit of RouteLLM's with many points).
"""
from __future__ import annotations

import numpy as np


def routing_curve(score, weak_correct, strong_correct):
    score = np.asarray(score, dtype=np.float64)
    weak = np.asarray(weak_correct, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    n = len(score)
    order = np.argsort(-score, kind="stable")
    s_sorted = score[order]
    gain = (strong - weak)[order]
    cum_gain = np.concatenate([[0.0], np.cumsum(gain)])
    # boundaries: after the last element of each tie group
    last_of_group = np.nonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])[0] + 1
    k = np.concatenate([[0], last_of_group])  # number routed to cloud
    x = k / n
    acc = weak.mean() + cum_gain[k] / n
    return x, acc


def apgr(score, weak_correct, strong_correct) -> float:
    x, acc = routing_curve(score, weak_correct, strong_correct)
    w = float(np.mean(weak_correct))
    s = float(np.mean(strong_correct))
    auc = float(np.sum((x[1:] - x[:-1]) * (acc[1:] + acc[:-1]) / 2.0))
    return (auc - w) / (s - w)


def cpt(score, weak_correct, strong_correct, pgr: float = 0.5) -> float:
    x, acc = routing_curve(score, weak_correct, strong_correct)
    w = float(np.mean(weak_correct))
    s = float(np.mean(strong_correct))
    target = w + pgr * (s - w)
    ok = np.nonzero(acc >= target - 1e-12)[0]
    return float(x[ok[0]]) if len(ok) else 1.0


def evaluate(score, weak_correct, strong_correct) -> dict:
    from sklearn.metrics import roc_auc_score

    y = 1 - np.asarray(weak_correct)
    return {
        "apgr": apgr(score, weak_correct, strong_correct),
        "cpt50": cpt(score, weak_correct, strong_correct, 0.5),
        "auroc_weak_fail": float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan"),
    }


if __name__ == "__main__":
    # self-test: random router ~0.5, oracle high
    rng = np.random.default_rng(0)
    n = 5000
    weak = rng.random(n) < 0.67
    strong = np.where(weak, rng.random(n) < 0.92, rng.random(n) < 0.58)
    print("random", evaluate(rng.random(n), weak, strong))
    print("oracle", evaluate((~weak).astype(float) + 0.5 * strong, weak, strong))
    print("constant", evaluate(np.zeros(n), weak, strong))
