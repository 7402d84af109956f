"""Shared helpers: data loading, tokenizer config, windowing, ORT feature extraction."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(os.environ.get("ROUTER_DATA", "/work/shared/data/routing/train.jsonl"))
CACHE = Path(os.environ.get("ROUTER_CACHE", "/tmp/router-cache"))
CLS_ID, SEP_ID = 101, 102


def load_rows(path: Path = DATA):
    rows = [json.loads(l) for l in open(path)]
    prompts = [r["prompt"] for r in rows]
    y = np.array([not r["weak_correct"] for r in rows], dtype=np.int64)  # 1 = local fails
    weak = np.array([r["weak_correct"] for r in rows], dtype=np.float64)
    strong = np.array([r["strong_correct"] for r in rows], dtype=np.float64)
    groups = np.array([r["source"] for r in rows])
    return prompts, y, weak, strong, groups


def base_tokenizer():
    from tokenizers import Tokenizer

    from minilm_graph import model_dir

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def shipped_tokenizer(max_tokens: int):
    """Tokenizer file content: padding disabled, truncation at max_tokens (incl. [CLS]/[SEP])."""
    tok = base_tokenizer()
    tok.enable_truncation(max_length=max_tokens, strategy="longest_first", direction="right")
    return tok


def window(ids: list[int], strategy: dict) -> list[int]:
    """ids: content ids WITHOUT specials. Returns ids with [CLS]/[SEP] after windowing.

    head: keep the first max_tokens-2 content tokens.
    head_tail: if len > head+tail, keep the first `head` and the last `tail` content tokens.
    """
    if strategy["strategy"] == "head":
        n = strategy["max_tokens"] - 2
        ids = ids[:n]
    elif strategy["strategy"] == "head_tail":
        h, t = strategy["head"], strategy["tail"]
        if len(ids) > h + t:
            ids = ids[:h] + (ids[-t:] if t > 0 else [])
    else:
        raise ValueError(strategy)
    return [CLS_ID] + list(ids) + [SEP_ID]


def encode_all(prompts, strategy: dict) -> list[list[int]]:
    tok = base_tokenizer()
    encs = tok.encode_batch(prompts, add_special_tokens=False)
    return [window(e.ids, strategy) for e in encs]


def strategy_key(strategy: dict) -> str:
    return "_".join(f"{k}{v}" for k, v in sorted(strategy.items()))


def make_session(model, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so,
                                providers=["CPUExecutionProvider"])


def run_batched(sess, id_lists, outputs, max_batch_tokens=4096):
    """Runs sess over id lists in length-sorted padded batches; returns dict of arrays in order."""
    order = np.argsort([len(x) for x in id_lists], kind="stable")
    res = {o: [None] * len(id_lists) for o in outputs}
    i = 0
    while i < len(order):
        L = len(id_lists[order[i]])
        j = i
        while j < len(order) and (j - i + 1) * len(id_lists[order[j]]) <= max_batch_tokens and j - i < 256:
            j += 1
        j = max(j, i + 1)
        idx = order[i:j]
        S = max(len(id_lists[k]) for k in idx)
        ids = np.zeros((len(idx), S), np.int64)
        mask = np.zeros((len(idx), S), np.int64)
        for r, k in enumerate(idx):
            ids[r, : len(id_lists[k])] = id_lists[k]
            mask[r, : len(id_lists[k])] = 1
        out = sess.run(outputs, {"input_ids": ids, "attention_mask": mask})
        for o, a in zip(outputs, out):
            for r, k in enumerate(idx):
                res[o][k] = a[r]
        i = j
    return {o: np.stack(v) for o, v in res.items()}


def extract_features(prompts, strategy: dict, threads: int = 2):
    """Cached fp32 features for a truncation strategy: embedding, layer_means, cls, ids."""
    CACHE.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(("\n\x00".join(prompts)).encode()).hexdigest()[:12]
    f = CACHE / f"feat_{strategy_key(strategy)}_{h}.npz"
    id_lists = encode_all(prompts, strategy)
    if f.exists():
        d = dict(np.load(f))
    else:
        from minilm_graph import build_feature_model, load_weights

        sess = make_session(build_feature_model(load_weights()), threads)
        d = run_batched(sess, id_lists, ["embedding", "layer_means", "cls"])
        np.savez(f, **d)
    d["ids"] = id_lists
    return d


def sha256_file(p) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
