"""One stage of a pipelined model: blocks [start, end) of its chain of profile blocks, as a fragment of its own.

The model is exported (torch.export, batch dimension dynamic) and each node of its graph is given to the block
whose module path holds it (its nn_module_stack); glue between blocks (a flatten, a reshape) goes with the block
that produced its input. Stage k keeps the nodes of its blocks and:
- takes the values that earlier stages produce and later ones read, the "frontier" before it, named act_0,
  act_1, ... in graph order (stage 0 takes the model's own inputs);
- returns the frontier after it (the last stage returns the model's own outputs, by their names).
Every stage traces the same model, so neighbours agree on the frontier without being told. Only those
boundary activations cross the network; each stage holds only the weights its nodes read.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import fx

from genie.errors import InvalidRequest
from genie.workers.stateless.loading import Built, InputSig

STAGE = "stage"
ACT = "act_"
REDO = "genie_recompute"  # node.meta key: made from sizes and constants only
EXPORT_BATCH = 2  # an example batch above 1, so the exported graph keeps the batch dimension dynamic


def stage_part(built: Built, blocks: tuple[str, ...], start: int, end: int, fragment_id: str) -> Built:
    """Blocks [start, end) of `blocks` (the model's whole chain of block module paths, in order)."""
    if not 0 <= start < end <= len(blocks):
        raise InvalidRequest(f"fragment {fragment_id!r}: stage blocks [{start}, {end}) lie outside the model's "
                             f"{len(blocks)} blocks; re-plan the model")
    gm, names = _export(built, fragment_id)
    where = _place(gm, blocks)
    _mark_recomputable(gm)
    last = end == len(blocks)
    before = _frontier(gm, where, start) if start else None
    after = None if last else _frontier(gm, where, end)
    module = _stage_graph(gm, where, start, end, before, after, names)
    taken = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    inputs = (tuple(sig for sig in built.inputs if sig.name in taken) if before is None
              else tuple(_act_sig(n, i, fragment_id) for i, n in enumerate(before)))
    if after is not None:
        for n in after:
            _act_sig(n, 0, fragment_id)  # refuses a boundary that is not a tensor
    return replace(built, module=module, inputs=inputs, required=frozenset(s.name for s in inputs),
                   positional=False)


def _export(built: Built, fragment_id: str) -> tuple[fx.GraphModule, tuple[str, ...]]:
    """The model as a graph over its required inputs (in signature order), and the names of its outputs."""
    from genie.workers.stateless.fragment import _named_outputs

    sigs = [sig for sig in built.inputs if sig.name in built.required]
    param = next(built.module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = next((p.dtype for p in built.module.parameters() if p.is_floating_point()), torch.float32)
    example = {sig.name: torch.zeros((EXPORT_BATCH, *sig.probe_shape[1:]), device=device,
                                     dtype=torch.int64 if sig.integer else dtype) for sig in sigs}
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad():
            eager = _named_outputs(built.module(**example), fragment_id)
            program = torch.export.export(built.module, (), example, strict=False,
                                          dynamic_shapes={name: {0: batch} for name in example})
    except InvalidRequest:
        raise
    except Exception as exc:  # export raises many kinds on data-dependent control flow
        raise InvalidRequest(f"fragment {fragment_id!r}: the model cannot be exported to cut it into stages "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); serve it whole "
                             "(strategy: replicas, with more workers.memory_mib)") from None
    gm = program.module()
    outs = _output_node(gm).args[0]
    if len(outs) != len(eager):
        raise InvalidRequest(f"fragment {fragment_id!r}: the exported model returns {len(outs)} tensors but the "
                             f"model {len(eager)}; serve it whole (strategy: replicas)")
    return gm, tuple(eager)


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "output")


def _block_of(node: fx.Node, blocks: tuple[str, ...]) -> int | None:
    """The innermost block whose module path holds the node, by its nn_module_stack ("vit.layers.3", not
    "vit", when both are blocks)."""
    found = [(len(name), i) for path, _ in (node.meta.get("nn_module_stack") or {}).values()
             for i, name in enumerate(blocks) if name and (path == name or path.startswith(name + "."))]
    return max(found)[1] if found else None


def _place(gm: fx.GraphModule, blocks: tuple[str, ...]) -> dict[fx.Node, int]:
    """Each computing node's block index; glue takes its latest input's block, and glue that reads no
    computed value (a constant, a size of an input) the block of its first reader."""
    where: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method", "call_module"):
            own = _block_of(n, blocks)
            inputs = [where[i] for i in n.all_input_nodes if i in where]
            where[n] = max([own if own is not None else -1, *inputs])
    for n in reversed(list(gm.graph.nodes)):
        if where.get(n) == -1:
            readers = [where[u] for u in n.users if where.get(u, -1) >= 0]
            where[n] = min(readers, default=0)
    return where


def _frontier(gm: fx.GraphModule, where: dict[fx.Node, int], cut: int) -> list[fx.Node]:
    """Values made before block `cut` (or model inputs) that nodes from block `cut` on read, in graph order."""
    return [n for n in gm.graph.nodes
            if (n.op == "placeholder" or where.get(n, cut) < cut) and not _is_size(n) and not n.meta.get(REDO)
            and any(where.get(u, -1) >= cut or u.op == "output" for u in n.users)]


def _mark_recomputable(gm: fx.GraphModule) -> None:
    """Marks values made from sizes and constants alone (ViT's attention mask of ones): a stage that reads one
    makes it again itself, so nothing crosses for it."""
    for n in gm.graph.nodes:
        n.meta[REDO] = n.op in ("call_function", "call_method") and all(
            _is_size(i) or i.meta.get(REDO) for i in n.all_input_nodes)


def _is_size(node: fx.Node) -> bool:
    """A value computed from shapes (a batch size for a reshape): each stage recomputes it, nothing crosses."""
    return isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool))


def _stage_graph(gm: fx.GraphModule, where: dict[fx.Node, int], start: int, end: int,
                 before: list[fx.Node] | None, after: list[fx.Node] | None, names: tuple[str, ...]) -> fx.GraphModule:
    g, env = fx.Graph(), {}
    given = [n for n in gm.graph.nodes if n.op == "placeholder"] if before is None else before
    for i, n in enumerate(given):
        env[n] = g.placeholder(n.name if before is None else f"{ACT}{i}")

    def arg(x: fx.Node) -> fx.Node:
        if x not in env and x.op == "get_attr":  # a weight: copied in where a node of this stage reads it
            env[x] = g.node_copy(x)
        elif x not in env and x.meta.get(REDO) and not _is_size(x):
            env[x] = g.node_copy(x, arg)
        elif x not in env and _is_size(x):  # a size made upstream: read again off this stage's own inputs
            env[x] = _size_of(g, x, given, env) or g.node_copy(x, arg)
        return env[x]

    for n in gm.graph.nodes:
        if n in where and start <= where[n] < end and n not in env:
            env[n] = g.node_copy(n, arg)
    if after is None:
        outs = _output_node(gm).args[0]
        g.output({name: env[o] for name, o in zip(names, outs, strict=True)})
    else:
        g.output({f"{ACT}{i}": env[n] for i, n in enumerate(after)})
    return fx.GraphModule(gm, g)


def _size_of(g: fx.Graph, x: fx.Node, given: list[fx.Node], env: dict) -> fx.Node | None:
    """`x` (a dimension of some tensor) as the same dimension of one of the stage's inputs, when one has it."""
    if x.target is not torch.ops.aten.sym_size.int:
        return None
    want = x.meta["val"]
    for n in given:
        val = n.meta.get("val")
        for d, size in enumerate(val.shape if isinstance(val, torch.Tensor) else ()):
            if isinstance(size, torch.SymInt) and isinstance(want, torch.SymInt) and size.node.expr == want.node.expr:
                return g.call_function(torch.ops.aten.sym_size.int, (env[n], d))
    return None


def _act_sig(node: fx.Node, i: int, fragment_id: str) -> InputSig:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        raise InvalidRequest(f"fragment {fragment_id!r}: the stage boundary carries {node.name!r}, which is not a "
                             "batched tensor; this model cannot be pipelined at this cut (pin replicas)")
    return InputSig(f"{ACT}{i}", not val.is_floating_point(), (1, *(int(d) for d in val.shape[1:])))
