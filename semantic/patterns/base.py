"""The pattern plugin contract.

A plugin looks at the graph IR and says whether (and how often) its pattern occurs. Third-party plugins
subclass PatternPlugin and are found through the `genie.patterns` entry-point group or
GENIE_PATTERN_PLUGINS=module:Name[,module:Name...].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from genie.semantic.walk import module_prefix


@dataclass(frozen=True, slots=True)
class PatternMatch:
    name: str
    instances: list[tuple[str, ...]]  # node groups, one per occurrence
    confidence: float  # in [0, 1]
    evidence: list[str] = field(default_factory=list)  # human-readable, for the profile's explanation
    modules: list[str] = field(default_factory=list)  # module paths of the occurrences
    info: list[dict[str, Any]] = field(default_factory=list)  # per-instance facts other analyses read

    @property
    def count(self) -> int:
        return len(self.instances)


class PatternPlugin(ABC):
    """Subclass, set `name`, implement `match` and `hints`."""

    name: str = ""

    @abstractmethod
    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        """Find every occurrence in `graph`; None when there is none."""

    @abstractmethod
    def hints(self) -> list[str]:
        """Optimisation hints that apply wherever the pattern occurs."""

    def result(self, instances: list[tuple[str, ...]], confidence: float, graph: nx.DiGraph, **kw: Any) -> PatternMatch | None:
        """Build a PatternMatch (None when empty), filling `modules` from the instances' nodes."""
        if not instances:
            return None
        modules = kw.pop("modules", None)
        if modules is None:
            modules = _owner_modules(graph, instances)
        return PatternMatch(self.name, instances, confidence, modules=modules, **kw)


def _owner_modules(graph: nx.DiGraph, instances: list[tuple[str, ...]]) -> list[str]:
    seen: dict[str, None] = {}
    for inst in instances:
        paths = [graph.nodes[n]["module"] for n in inst]
        seen[module_prefix(paths)] = None
    return list(seen)
