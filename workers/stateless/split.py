"""One side of a recsys split: the model's embedding tables alone, or the model without them.

The model is traced with torch.fx and its graph cut at the lookups of the tables the plan names (`cut`, module
paths such as "tables.0"):
- the tables part runs the lookups and what computes their ids from the inputs (e.g. `sparse_ids[:, 2]`), and
  returns one tensor, {"pooled": [batch, sum of the lookups' widths]}: each lookup's output flattened, in graph
  order;
- the dense part takes "pooled" in place of the lookups (sliced and reshaped back) plus the inputs the rest of
  the model reads, and returns the model's own outputs.
Both parts are GraphModules over the same submodules, so each holds only the weights of its side. Both sides
trace the same model, so they agree on the lookups' order and widths without being told.
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from genie.errors import InvalidRequest
from genie.workers.stateless.loading import Built, InputSig

TABLES, DENSE = "tables", "dense"
PARTS = (TABLES, DENSE)
POOLED = "pooled"


def split_part(built: Built, part: str, cut: tuple[str, ...], fragment_id: str) -> Built:
    """The `part` side of the model cut at the lookups of the tables in `cut`."""
    if part not in PARTS:
        raise InvalidRequest(f"fragment {fragment_id!r}: part {part!r} is unknown; use one of {', '.join(PARTS)}")
    gm = _trace(built, fragment_id)
    lookups = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in cut]
    absent = sorted(set(cut) - {n.target for n in lookups})
    if not cut or absent:
        raise InvalidRequest(f"fragment {fragment_id!r}: the model calls no table {absent[0] if absent else ''!r} "
                             "of the cut; re-plan the model (its plan names tables it does not have)")
    feeding = _ancestors(lookups)
    _check_tables_side(gm, feeding, set(cut), fragment_id)
    if part == TABLES:
        return _tables_part(built, _tables_graph(gm, lookups, feeding))
    module, width, names = _dense_graph(gm, lookups, _widths(gm, built, lookups))
    return _dense_part(built, module, width, names)


def _trace(built: Built, fragment_id: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(built.module)
    except Exception as exc:  # fx raises many kinds on data-dependent Python control flow
        raise InvalidRequest(f"fragment {fragment_id!r}: the model cannot be traced to split it "
                             f"({type(exc).__name__}: {str(exc)[:200]}); serve it whole (strategy: replicas)") from None


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    seen, todo = set(), list(nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _check_tables_side(gm: fx.GraphModule, feeding: set[fx.Node], cut: set[str], fragment_id: str) -> None:
    """The ids of the tables may come from the inputs through weightless ops only, never through other modules."""
    for n in feeding:
        if (n.op == "call_module" and n.target not in cut) or n.op == "get_attr":
            raise InvalidRequest(f"fragment {fragment_id!r}: the tables' ids are computed by {n.target!r}, which "
                                 "holds weights of the dense side; this model cannot be split at its tables")


def _tables_graph(gm: fx.GraphModule, lookups: list[fx.Node], feeding: set[fx.Node]) -> fx.GraphModule:
    g, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        if n in feeding:
            env[n] = g.node_copy(n, lambda x: env[x])
    flat = [g.call_method("flatten", (env[n], 1)) for n in lookups]
    g.output({POOLED: g.call_function(torch.cat, (flat, 1))})  # [batch, sum of widths]
    return fx.GraphModule(gm, g)


def _widths(gm: fx.GraphModule, built: Built, lookups: list[fx.Node]) -> list[tuple[int, ...]]:
    """Each lookup's output shape beyond the batch, from one probe forward of the traced model."""
    device = next((p.device for p in built.module.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in built.module.parameters() if p.is_floating_point()), torch.float32)
    by_name = {sig.name: sig for sig in built.inputs}
    args = [torch.zeros(by_name[n.target].probe_shape, device=device,
                        dtype=torch.int64 if by_name[n.target].integer else dtype)
            for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        ShapeProp(gm).propagate(*args)
    return [tuple(n.meta["tensor_meta"].shape[1:]) for n in lookups]


def _dense_graph(gm: fx.GraphModule, lookups: list[fx.Node],
                 widths: list[tuple[int, ...]]) -> tuple[fx.GraphModule, int, tuple[str, ...]]:
    """The model with each lookup replaced by its slice of "pooled": (module, width of pooled, other inputs)."""
    g, env = fx.Graph(), {}
    pooled = g.placeholder(POOLED)
    start = 0
    for n, shape in zip(lookups, widths, strict=True):
        width = math.prod(shape)
        piece = g.call_function(operator.getitem, (pooled, (slice(None), slice(start, start + width))))
        env[n] = g.call_method("reshape", (piece, (-1, *shape)))
        start += width
    output = next(n for n in gm.graph.nodes if n.op == "output")
    needed = _ancestors_stopping([output], set(lookups))
    inputs = []
    for n in gm.graph.nodes:
        if n in needed and n not in env:
            env[n] = g.node_copy(n, lambda x: env[x])
            if n.op == "placeholder":
                inputs.append(n.target)
    return fx.GraphModule(gm, g), start, tuple(inputs)


def _ancestors_stopping(nodes: list[fx.Node], stop: set[fx.Node]) -> set[fx.Node]:
    seen, todo = set(), list(nodes)
    while todo:
        n = todo.pop()
        if n not in seen and n not in stop:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _tables_part(built: Built, module: fx.GraphModule) -> Built:
    names = {n.target for n in module.graph.nodes if n.op == "placeholder"}
    return _with(built, module, tuple(sig for sig in built.inputs if sig.name in names))


def _dense_part(built: Built, module: fx.GraphModule, width: int, names: tuple[str, ...]) -> Built:
    sigs = tuple(sig for sig in built.inputs if sig.name in names)
    return _with(built, module, (InputSig(POOLED, False, (1, width)), *sigs))


def _with(built: Built, module: fx.GraphModule, sigs: tuple[InputSig, ...]) -> Built:
    """A Built for one side: its own module and inputs (called by name, all required), the model's limits kept."""
    return replace(built, module=module, inputs=sigs, required=frozenset(s.name for s in sigs), positional=False)
