"""In-graph-computable features from token ids (the shipped graph recomputes exactly these).

* lexical: bag of wordpieces, L1-normalised over the real tokens (incl. [CLS]/[SEP]) -> a linear
  model on it is a per-wordpiece weight table gathered by input_ids and mask-averaged.
* structural: a few per-wordpiece indicator tables (digit, math symbol, '##' continuation,
  negation word, punctuation), each mask-averaged (a share) and log1p(mask-summed) (a count), plus
  log(token count).
"""
from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp

from minilm_graph import VOCAB, model_dir

NEG_WORDS = {"not", "except", "never", "no", "false", "incorrect", "least", "cannot", "none",
             "neither", "nor", "unlikely", "untrue", "exception"}
MATH_CHARS = set("+-*/=^<>%$×÷√≤≥∑∫π")
PUNCT_CHARS = set(".,;:!?\"'()[]{}")


def vocab_list() -> list[str]:
    tj = json.load(open(model_dir() / "tokenizer.json"))
    v = tj["model"]["vocab"]
    out = [""] * len(v)
    for t, i in v.items():
        out[i] = t
    assert len(out) == VOCAB
    return out


STRUCT_TABLE_NAMES = ["digit", "math", "subword", "neg", "punct"]


def struct_tables() -> np.ndarray:
    """[VOCAB, 5] float32 indicator tables."""
    voc = vocab_list()
    T = np.zeros((VOCAB, len(STRUCT_TABLE_NAMES)), np.float32)
    for i, t in enumerate(voc):
        core = t[2:] if t.startswith("##") else t
        T[i, 0] = any(c.isdigit() for c in core)
        T[i, 1] = len(core) > 0 and all(c in MATH_CHARS for c in core)
        T[i, 2] = t.startswith("##")
        T[i, 3] = t in NEG_WORDS
        T[i, 4] = len(core) > 0 and all(c in PUNCT_CHARS for c in core)
    return T


STRUCT_NAMES = ([f"share_{n}" for n in STRUCT_TABLE_NAMES] + [f"log1p_count_{n}" for n in STRUCT_TABLE_NAMES]
                + ["log_len"])


def struct_features(id_lists, T=None) -> np.ndarray:
    T = struct_tables() if T is None else T
    out = np.zeros((len(id_lists), 2 * T.shape[1] + 1), np.float32)
    for r, ids in enumerate(id_lists):
        g = T[np.asarray(ids)]
        s = g.sum(0)
        out[r, : T.shape[1]] = s / len(ids)
        out[r, T.shape[1]: 2 * T.shape[1]] = np.log1p(s)
        out[r, -1] = np.log(len(ids))
    return out


def lexical_matrix(id_lists) -> sp.csr_matrix:
    """n x VOCAB, row = wordpiece counts / number of tokens."""
    rows, cols, vals = [], [], []
    for r, ids in enumerate(id_lists):
        u, c = np.unique(np.asarray(ids), return_counts=True)
        rows.append(np.full(len(u), r))
        cols.append(u)
        vals.append(c / len(ids))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(len(id_lists), VOCAB), dtype=np.float64)
