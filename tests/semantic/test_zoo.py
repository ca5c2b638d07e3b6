"""Workload classification over a zoo of transformers architectures (LLMs, encoders, vision, speech,
vision-language) plus recommenders, a VQA-style model and one with data-dependent shapes of our own."""

from __future__ import annotations

from collections import Counter

import pytest
from semantic_zoo import ZOO

from genie.semantic import ClusterSpec, WorkerSpec, WorkloadType, analyze, plan

LABELS = [w.value for w in WorkloadType]


def confusion_table(results: dict[str, tuple[str, str]]) -> str:
    """Rows: expected workload; columns: predicted workload."""
    cells = Counter((want, got) for want, got in results.values())
    width = max(len(x) for x in LABELS) + 1
    lines = ["expected \\ got".ljust(width + 4) + "".join(x[:width - 1].rjust(width) for x in LABELS)]
    for want in LABELS:
        if any(w == want for w, _ in cells):
            lines.append(want.ljust(width + 4) + "".join(str(cells[(want, got)]).rjust(width) for got in LABELS))
    wrong = [f"  {name}: expected {w}, got {g}" for name, (w, g) in results.items() if w != g]
    return "\n".join([*lines, *(["misclassified:", *wrong] if wrong else [])])


@pytest.mark.slow
def test_zoo_classification_accuracy():
    results, failures = {}, {}
    cluster = ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 2**30, 1e12, 50e9) for i in range(2)), 10e9)
    for name, (build, expected) in ZOO.items():
        model, inputs = build()
        try:
            profile = analyze(model, inputs, name=name)
        except ValueError as error:  # counted as wrong, and shown
            results[name] = (expected, "unknown")
            failures[name] = str(error)
            continue
        results[name] = (expected, profile.workload_type)
        placed = plan(profile, cluster)  # every zoo model also gets a plan that places all of it
        covered = {n for f in placed.fragments for n in f.nodes} or {b.name for b in profile.blocks}
        assert covered == {b.name for b in profile.blocks}, name
    table = confusion_table(results)
    print(f"\n{table}")
    correct = sum(w == g for w, g in results.values())
    print(f"{correct}/{len(results)} correct")
    assert not failures, f"every zoo model must capture: {failures}"
    assert len(results) >= 40
    assert correct / len(results) >= 0.95, f"{correct}/{len(results)} correct\n{table}"


def test_confusion_table_format():
    table = confusion_table({"a": ("llm", "llm"), "b": ("vision", "llm")})
    assert "misclassified:" in table and "b: expected vision, got llm" in table
    llm_row = next(line for line in table.splitlines() if line.startswith("llm "))
    assert llm_row.split()[1] == "1"
