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

When the tables are spread over several tables fragments (a table bigger than one worker is sharded by rows),
each tables fragment's `cut` names every table: "tables.0" it holds whole, "tables.2[0:120]" it holds rows 0..119
of, "~tables.1" it does not hold. It still returns the whole "pooled" layout, with zeros where it holds nothing
(a row shard looks up the ids in its rows and gives zeros for the others), so the router adds the tables
fragments' "pooled" up: every entry has one fragment that holds it, and x + 0 is exactly x.
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
from torch import fx, nn
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
    held = parse_cut(cut, fragment_id)
    gm = _trace(built, fragment_id)
    lookups = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in held]
    absent = sorted(set(held) - {n.target for n in lookups})
    if not cut or absent:
        raise InvalidRequest(f"fragment {fragment_id!r}: the model calls no table {absent[0] if absent else ''!r} "
                             "of the cut; re-plan the model (its plan names tables it does not have)")
    mine = [n for n in lookups if held[n.target] is not False] if part == TABLES else lookups
    if not mine:
        raise InvalidRequest(f"fragment {fragment_id!r}: its cut holds none of the tables; re-plan the model")
    feeding = _ancestors(mine)
    _check_tables_side(gm, feeding, set(held), fragment_id)
    if part == TABLES:
        widths = _widths(gm, built, lookups) if len(mine) < len(lookups) else None
        module = _tables_graph(gm, lookups, feeding, set(mine), widths)
        for n in mine:
            if held[n.target] is not None:
                module.add_submodule(n.target, RowShard(gm.get_submodule(n.target), *held[n.target], n.target,
                                                        fragment_id))
        return _tables_part(built, module)
    module, width, names = _dense_graph(gm, lookups, _widths(gm, built, lookups))
    return _dense_part(built, module, width, names)


def parse_cut(cut: tuple[str, ...], fragment_id: str) -> dict[str, tuple[int, int] | None | bool]:
    """Table path -> None (held whole), (start, end) (rows held), False (not held: zeros)."""
    held: dict[str, tuple[int, int] | None | bool] = {}
    for entry in cut:
        if entry.startswith("~"):
            held[entry[1:]] = False
            continue
        path, _, rows = entry.partition("[")
        try:
            start, end = (int(x) for x in rows.rstrip("]").split(":")) if rows else (0, 0)
        except ValueError:
            raise InvalidRequest(f"fragment {fragment_id!r}: cut entry {entry!r} is not 'path', 'path[start:end]' "
                                 "or '~path'; re-plan the model") from None
        if rows and not 0 <= start < end:
            raise InvalidRequest(f"fragment {fragment_id!r}: cut entry {entry!r} holds no rows; re-plan the model")
        held[path] = (start, end) if rows else None
    return held


class RowShard(nn.Module):
    """Rows [start, end) of an nn.Embedding: ids in them are looked up, others give zeros (another shard's)."""

    def __init__(self, table: nn.Module, start: int, end: int, path: str, fragment_id: str) -> None:
        super().__init__()
        if type(table) is not nn.Embedding or table.max_norm is not None or end > table.num_embeddings:
            raise InvalidRequest(f"fragment {fragment_id!r}: table {path!r} cannot be sharded by rows [{start}, "
                                 f"{end}) (a plain nn.Embedding of at least {end} rows can); re-plan the model")
        self.weight = nn.Parameter(table.weight.detach()[start:end].clone(), requires_grad=False)
        self.start, self.end, self.rows, self.path = start, end, table.num_embeddings, path

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel():
            low, high = torch.aminmax(ids)
            if low < 0 or high >= self.rows:
                bad = int(low) if low < 0 else int(high)
                raise InvalidRequest(f"id {bad} lies outside embedding table {self.path!r} ({self.rows} rows: ids 0 "
                                     f"to {self.rows - 1})")
        inside = (ids >= self.start) & (ids < self.end)
        local = torch.where(inside, ids - self.start, torch.zeros_like(ids))
        return nn.functional.embedding(local, self.weight) * inside.unsqueeze(-1).to(self.weight.dtype)


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


def _tables_graph(gm: fx.GraphModule, lookups: list[fx.Node], feeding: set[fx.Node], mine: set[fx.Node],
                  widths: list[tuple[int, ...]] | None) -> fx.GraphModule:
    """The lookups in `mine` and what feeds them; the others' places in "pooled" filled with zeros."""
    g, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        if n in feeding:
            env[n] = g.node_copy(n, lambda x: env[x])
    ref = env[next(n for n in lookups if n in mine)]
    for n, shape in zip(lookups, widths or [()] * len(lookups), strict=True):
        if n not in mine:  # [batch, *shape] zeros, the batch read off a lookup this fragment holds
            env[n] = g.call_method("new_zeros", (ref, (g.call_method("size", (ref, 0)), *shape)))
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
