"""MLP (linear -> activation -> linear) and gated MLP (act(x W_gate) * (x W_up) -> W_down)."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from genie.semantic.capture.ir import attrs
from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.walk import is_linear, module_prefix, nodes_of, source

_BETWEEN = frozenset({"view", "elementwise", "activation"})
_ACT_OPS = frozenset({"tanh", "erf", "sigmoid"})  # activations written out by hand (GELU-tanh, quick GELU)


@dataclass(frozen=True, slots=True)
class MLPSite:
    nodes: tuple[str, ...]  # up/gate projections, the ops between, the down projection
    gated: bool
    module: str


def find_mlps(g: nx.DiGraph) -> list[MLPSite]:
    cached = g.graph.get("_mlps")
    if cached is None:
        cached = [s for down in nodes_of(g, "matmul") if is_linear(g, down) for s in [_site(g, down)] if s]
        g.graph["_mlps"] = cached
    return cached


class MLPPattern(PatternPlugin):
    name = "mlp"
    gated = False

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        sites = [s for s in find_mlps(graph) if s.gated == self.gated]
        label = "gated MLP (gate * up -> down)" if self.gated else "MLP (linear -> activation -> linear)"
        evidence = [f"{len(sites)} {label} blocks"] if sites else []
        return self.result([s.nodes for s in sites], 0.9, graph, evidence=evidence,
                           modules=list(dict.fromkeys(s.module for s in sites)))

    def hints(self) -> list[str]:
        return ["fuse the activation into the first GEMM's epilogue", "memory-bound at small batch: batch decode steps"]


class GatedMLPPattern(MLPPattern):
    name = "gated_mlp"
    gated = True

    def hints(self) -> list[str]:
        return ["merge the gate and up projections into one GEMM (shared input)", "fuse act(gate) * up"]


def _site(g: nx.DiGraph, down: str) -> MLPSite | None:
    nodes = attrs(g)
    ins = nodes[down]["inputs"]
    if not ins:
        return None
    start = source(g, ins[0])
    between, linears, has_act = _walk(g, start)
    if not linears or not has_act:
        return None
    gated = any(_is_gate(g, m, between) for m in between if nodes[m]["op"] == "mul")
    module = module_prefix(nodes[n]["module"] for n in (*linears, down))
    members = (*sorted(linears, key=_order(g)), *sorted(between, key=_order(g)), down)
    return MLPSite(members, gated, module)


def _walk(g: nx.DiGraph, start: str) -> tuple[set[str], set[str], bool]:
    """Back from the down projection's input through elementwise/activation ops to the up projections."""
    nodes = attrs(g)
    between, linears, stack, has_act = set(), set(), [start], False
    while stack and len(between) < 16:
        n = stack.pop()
        if n in between or n in linears:
            continue
        d = nodes[n]
        if is_linear(g, n):
            linears.add(n)
        elif d["kind"] in _BETWEEN:
            between.add(n)
            has_act |= d["kind"] == "activation" or d["op"] in _ACT_OPS
            stack.extend(d["inputs"])
    return between, linears, has_act


def _is_gate(g: nx.DiGraph, mul: str, between: set[str]) -> bool:
    """mul(act(a), b) where a and b are different projections (or two halves of one fused gate_up)."""
    nodes = attrs(g)
    ins = nodes[mul]["inputs"]
    if len(ins) != 2:
        return False
    acts = [_has_activation(g, i, between) for i in ins]
    if acts[0] == acts[1]:
        return False
    origins = [_origin(g, i) for i in ins]
    if None in origins:
        return False
    if origins[0] != origins[1]:
        return True
    width = nodes[origins[0]]["shapes"][0][-1]
    return width == 2 * nodes[mul]["shapes"][0][-1]


def _has_activation(g: nx.DiGraph, n: str, between: set[str]) -> bool:
    nodes = attrs(g)
    stack, seen = [n], set()
    while stack:
        m = stack.pop()
        if m in seen or m not in between:
            continue
        seen.add(m)
        if nodes[m]["kind"] == "activation" or nodes[m]["op"] in _ACT_OPS:
            return True
        stack.extend(nodes[m]["inputs"])
    return False


def _origin(g: nx.DiGraph, n: str) -> str | None:
    nodes = attrs(g)
    for _ in range(16):
        if is_linear(g, n):
            return n
        ins = nodes[n]["inputs"]
        if nodes[n]["kind"] not in _BETWEEN or not ins:
            return None
        n = ins[0]
    return None


def _order(g: nx.DiGraph):
    return lambda n: g.nodes[n]["index"]
