"""The graph IR: a networkx.DiGraph with one node per tensor op, user input and the output.

Node attributes:
    op            aten op name ("linear", "scaled_dot_product_attention"); "input" / "output" for the ends
    kind          op family from capture.ops ("matmul", "sdpa", "norm"...)
    target        the full aten overload ("aten.linear.default")
    module        innermost module path ("model.layers.3.self_attn.q_proj"), "" at the root
    shapes        output shapes, list of tuples;  dtypes: their dtypes
    params        parameter/buffer names the op reads
    param_bytes   bytes of those parameters (resident)
    flops         FLOPs for the example inputs
    output_bytes  bytes of the outputs
    bytes_moved   bytes an unfused kernel reads and writes
    arg_shapes    shapes of every tensor argument, params included, in argument order
    consts        small scalar arguments (is_causal, dims)
    index         position in execution order
Edges carry `bytes`: the producer's output bytes.
Graph attributes: method, inputs {name: TensorInfo}, params {name: TensorInfo}, buffers, module_types,
outputs, notes, param_bytes (unique trainable weights), buffer_bytes, dtype_bytes, root_type, order
(node names in execution order).
"""

from __future__ import annotations

from collections import Counter

import networkx as nx

from genie.semantic.capture.flops import bytes_moved, flops
from genie.semantic.capture.ops import op_kind
from genie.semantic.capture.records import Captured

OUTPUT = "output"


def build_graph(cap: Captured, root_type: str) -> nx.DiGraph:
    weights = {n: t for n, t in cap.params.items() if n not in cap.buffers}
    g = nx.DiGraph(
        method=cap.method,
        inputs=cap.inputs,
        params=cap.params,
        buffers=cap.buffers,
        module_types={"": root_type, **cap.module_types},
        outputs=cap.outputs,
        notes=cap.notes,
        param_bytes=sum(t.nbytes for t in weights.values()),
        buffer_bytes=sum(cap.params[b].nbytes for b in cap.buffers),
        dtype_bytes=_dominant_itemsize(weights),
        root_type=root_type,
    )
    for i, (name, info) in enumerate(cap.inputs.items()):
        g.add_node(name, **_attrs("input", "input", "", "", [info.shape], [info.dtype], index=i))
        g.nodes[name]["output_bytes"] = info.nbytes
    for i, r in enumerate(cap.records, start=len(cap.inputs)):
        kind = op_kind(r.op)
        uniq = list(dict.fromkeys(r.params))
        param_bytes = sum(cap.params[p].nbytes for p in uniq)
        out_bytes = sum(o.nbytes for o in r.outputs)
        act_in = sum(g.nodes[p]["output_bytes"] for p in dict.fromkeys(r.inputs))
        attrs = _attrs(r.op, kind, r.target, r.module, [o.shape for o in r.outputs], [o.dtype for o in r.outputs], i)
        attrs.update(
            params=tuple(uniq),
            param_bytes=param_bytes,
            output_bytes=out_bytes,
            flops=flops(kind, r.op, r.arg_shapes, attrs["shapes"]),
            bytes_moved=bytes_moved(kind, act_in, param_bytes, out_bytes),
            arg_shapes=r.arg_shapes,
            consts=r.consts,
            inputs=tuple(r.inputs),
        )
        g.add_node(r.name, **attrs)
        for src in r.inputs:
            g.add_edge(src, r.name, bytes=g.nodes[src]["output_bytes"])
    g.add_node(OUTPUT, **_attrs("output", "output", "", "", [], [], len(g)))
    for src in cap.outputs:
        g.add_edge(src, OUTPUT, bytes=g.nodes[src]["output_bytes"])
    g.graph["order"] = [*cap.inputs, *(r.name for r in cap.records), OUTPUT]
    return g


def _attrs(op: str, kind: str, target: str, module: str, shapes: list, dtypes: list, index: int) -> dict:
    return {
        "op": op, "kind": kind, "target": target, "module": module, "shapes": shapes, "dtypes": dtypes,
        "params": (), "param_bytes": 0, "flops": 0.0, "output_bytes": 0, "bytes_moved": 0, "arg_shapes": [],
        "consts": {}, "inputs": (), "index": index,
    }


def _dominant_itemsize(weights: dict) -> int:
    by_size: Counter[int] = Counter()
    for t in weights.values():
        by_size[t.itemsize] += t.nbytes
    return by_size.most_common(1)[0][0] if by_size else 4


def order(g: nx.DiGraph) -> list[str]:
    """All nodes in execution order."""
    cached = g.graph.get("order")
    if cached is None or len(cached) != g.number_of_nodes():
        cached = sorted(g.nodes, key=lambda n: g.nodes[n]["index"])
        g.graph["order"] = cached
    return cached


def op_nodes(g: nx.DiGraph) -> list[str]:
    """Nodes that are tensor ops (not the inputs or the output), in execution order."""
    cached = g.graph.get("_ops")
    if cached is None or cached[0] != g.number_of_nodes():
        table = attrs(g)
        cached = (g.number_of_nodes(), [n for n in order(g) if table[n]["kind"] not in ("input", "output")])
        g.graph["_ops"] = cached
    return cached[1]


def attrs(g: nx.DiGraph) -> dict[str, dict]:
    """node -> its attribute dict, as a plain dict: hot loops avoid networkx's view lookups."""
    cached = g.graph.get("_attrs")
    if cached is None or len(cached) != g.number_of_nodes():
        cached = dict(g.nodes(data=True))
        g.graph["_attrs"] = cached
    return cached
