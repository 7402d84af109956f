"""The shipped router graph: MiniLM encoder + frozen embedding output + in-graph complexity head.

complexity = sigmoid(platt_a * z + platt_b), where
  z = dense_w . D + sum_t lex_w[id_t]/n + struct_w . S + bias
  D = [embedding (L2-normalised mean pool of the last layer), optional extra mean-pooled layers]
  S = [share of each indicator table, log1p(count of each table), log(n)], n = real token count
All standardisation is folded into the weights (see build_router.py).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from minilm_graph import HIDDEN, OPSET, G, add_encoder, add_mean_pool, io_inputs

# nodes that must stay fp32 through quantize_dynamic (head + lookup tables)
HEAD_NODE_PREFIX = "head_"


def build_router_model(w, head: dict, smooth: dict | None = None) -> onnx.ModelProto:
    """head: dense_layers (list of hidden-state indices besides the final embedding, 0=embeddings),
    dense_w [Dd], lex_w [VOCAB] or None, struct_tables [VOCAB,k] or None, struct_w [2k+1],
    bias, platt_a, platt_b."""
    g = G()
    hidden, mask_f = add_encoder(g, w, "input_ids", "attention_mask", smooth)
    emb = add_mean_pool(g, hidden[-1], mask_f, normalize=True, out="embedding")

    def hop(op_type, inputs, out=None, **attrs):
        out = out or g.name("head_t")
        g.nodes.append(helper.make_node(op_type, inputs, [out], name=g.name(HEAD_NODE_PREFIX + op_type), **attrs))
        return out

    f32 = np.float32
    blocks = [emb] + [add_mean_pool(g, hidden[i], mask_f, normalize=False) for i in head.get("dense_layers", [])]
    D = blocks[0] if len(blocks) == 1 else hop("Concat", blocks, axis=1)
    g.const("head_dense_w", np.asarray(head["dense_w"], f32).reshape(-1, 1))
    z = hop("MatMul", [D, "head_dense_w"])  # [B,1]
    g.const("head_bias", np.array([head["bias"]], f32))
    z = hop("Add", [z, "head_bias"])
    n = hop("ReduceSum", [mask_f, "c_axes1"], keepdims=1)  # [B,1] real token count
    n = hop("Max", [n, "c_f1"])
    if head.get("lex_w") is not None:
        g.const("head_lex_table", np.asarray(head["lex_w"], f32).reshape(-1, 1))  # [V,1]
        lv = hop("Gather", ["head_lex_table", "input_ids"], axis=0)  # [B,S,1]
        lv = hop("Squeeze", [lv, "c_axes2"])  # [B,S]
        lv = hop("ReduceSum", [hop("Mul", [lv, mask_f]), "c_axes1"], keepdims=1)  # [B,1]
        z = hop("Add", [z, hop("Div", [lv, n])])
    if head.get("struct_tables") is not None:
        T = np.asarray(head["struct_tables"], f32)
        g.const("head_struct_table", T)
        sv = hop("Gather", ["head_struct_table", "input_ids"], axis=0)  # [B,S,k]
        m3 = hop("Unsqueeze", [mask_f, "c_axes2"])
        cnt = hop("ReduceSum", [hop("Mul", [sv, m3]), "c_axes1"], keepdims=0)  # [B,k]
        share = hop("Div", [cnt, n])
        l1p = hop("Log", [hop("Add", [cnt, "c_f1"])])
        S = hop("Concat", [share, l1p, hop("Log", [n])], axis=1)  # [B,2k+1]
        g.const("head_struct_w", np.asarray(head["struct_w"], f32).reshape(-1, 1))
        z = hop("Add", [z, hop("MatMul", [S, "head_struct_w"])])
    g.const("head_platt_a", np.array(head["platt_a"], f32))
    g.const("head_platt_b", np.array(head["platt_b"], f32))
    z = hop("Add", [hop("Mul", [z, "head_platt_a"]), "head_platt_b"])
    p = hop("Sigmoid", [z])
    hop("Squeeze", [p, "c_axes1"], out="complexity")
    outputs = [
        helper.make_tensor_value_info("complexity", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
    ]
    graph = helper.make_graph(g.nodes, "outpost_router", io_inputs(), outputs, g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="outpost-router-build")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def quantize_int8(fp32_path, int8_path, model: onnx.ModelProto):
    """Dynamic int8, per-channel, signed weights; the head (lookup tables, head MatMul) stays fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = [n.name for n in model.graph.node if n.name.startswith(HEAD_NODE_PREFIX)]
    quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=exclude)
