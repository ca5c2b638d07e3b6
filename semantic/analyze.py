"""analyze(model, example_inputs) -> Profile: capture, then patterns, classification, structure, phases, cost."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import networkx as nx
from torch import nn

from genie.semantic.blocks import make_blocks, uniform_stacks
from genie.semantic.capture import capture
from genie.semantic.capture.ir import op_nodes
from genie.semantic.classify import classify
from genie.semantic.cost import summarize
from genie.semantic.llm import decoder_stack, llm_shape
from genie.semantic.modality import input_modalities
from genie.semantic.patterns import PatternMatch, PatternRegistry, PatternRun
from genie.semantic.phases import build_phases
from genie.semantic.profile import Block, InputInfo, PatternSummary, Profile
from genie.semantic.profile import WorkloadType as W
from genie.semantic.version import ANALYZER_VERSION

MAX_MODULES = 64  # module paths kept per pattern in the profile


def analyze(model: nn.Module, example_inputs: tuple | dict[str, Any], name: str | None = None) -> Profile:
    """Profile `model` as called with `example_inputs` (a tuple of args or a dict of kwargs). No weights are read."""
    start = time.perf_counter()
    graph = capture(model, example_inputs)
    capture_ms = (time.perf_counter() - start) * 1e3
    return analyze_graph(graph, name or type(model).__name__, capture_ms=capture_ms)


def analyze_graph(graph: nx.DiGraph, name: str, registry: PatternRegistry | None = None,
                  capture_ms: float = 0.0) -> Profile:
    """The analysis half of `analyze`, on an already captured graph."""
    if not isinstance(graph, nx.DiGraph) or "params" not in graph.graph:
        raise TypeError("analyze_graph needs a graph made by genie.semantic.capture")
    if not op_nodes(graph):
        raise ValueError(f"{name}: the traced graph is empty (forward ran no tensor operation on the example "
                         "inputs), so there is nothing to analyse; check that forward uses its inputs")
    timings = {"capture": capture_ms}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = (now - clock) * 1e3
        clock = now

    registry = registry or PatternRegistry.default()
    run = registry.run(graph)
    lap("patterns")
    verdict = classify(graph, run.matches)
    lap("classify")
    cost = summarize(graph)
    kv = sum(i.get("kv_bytes_per_token", 0) for i in run.matches["kv_cache"].info) if "kv_cache" in run.matches else 0
    phases = build_phases(graph, verdict.workload, kv)
    lap("phases")
    shape = llm_shape(graph, phases[-1].flops) if verdict.workload is W.LLM else None
    blocks = _blocks(graph, verdict.workload)
    lap("structure")
    timings.update({f"pattern:{k}": round(v, 3) for k, v in run.timings_ms.items()})
    return Profile(
        name=name,
        workload_type=verdict.workload.value,
        confidence=verdict.confidence,
        explanation=_explain(graph, verdict.explanation, run),
        patterns=[_summary(registry, m, run.timings_ms[k]) for k, m in run.matches.items()],
        phases=phases,
        cost=cost,
        blocks=blocks,
        llm=shape,
        inputs=[InputInfo(n, list(t.shape), t.dtype, input_modalities(graph)[n]) for n, t in graph.graph["inputs"].items()],
        timings_ms={k: round(v, 3) for k, v in timings.items()},
        graph_nodes=len(op_nodes(graph)),
        capture_method=graph.graph["method"],
        analyzer_version=ANALYZER_VERSION,
    )


def _blocks(graph: nx.DiGraph, workload: W) -> list[Block]:
    stack = decoder_stack(graph) if workload is W.LLM else ""
    blocks = make_blocks(graph, {stack} if stack else uniform_stacks(graph),
                         multimodal=workload in (W.MULTIMODAL, W.AUDIO))
    if workload is W.RECSYS:
        blocks = [replace(b, kind="sparse" if b.kind == "embedding" else "dense") for b in blocks]
    return blocks


def _explain(graph: nx.DiGraph, verdict: list[str], run: PatternRun) -> list[str]:
    lines = [*verdict, *(e for m in run.matches.values() for e in m.evidence)]
    lines += [f"note: {n}" for n in graph.graph["notes"]]
    return lines + [f"pattern plugin {k} failed and was skipped: {v}" for k, v in run.errors.items()]


def _summary(registry: PatternRegistry, match: PatternMatch, time_ms: float) -> PatternSummary:
    return PatternSummary(
        name=match.name, count=match.count, confidence=match.confidence,
        hints=list(registry.get(match.name).hints()), modules=match.modules[:MAX_MODULES], time_ms=round(time_ms, 3),
    )

