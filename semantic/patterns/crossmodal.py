"""Cross-modal fusion: the points where branches fed by different input modalities meet."""

from __future__ import annotations

import networkx as nx

from genie.semantic.modality import input_modalities, meeting_points, reach
from genie.semantic.patterns.base import PatternMatch, PatternPlugin


class CrossModalFusionPattern(PatternPlugin):
    name = "cross_modal_fusion"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        points = meeting_points(graph)
        if not points:
            return None
        r = reach(graph)
        kinds = sorted({m for p in points for m in r[p]})
        first = graph.nodes[points[0]]
        inputs = ", ".join(f"{n} ({m})" for n, m in input_modalities(graph).items())
        evidence = [f"{' and '.join(kinds)} branches meet at {len(points)} point(s), first at "
                    f"{first['module'] or 'the top level'} ({first['op']}); inputs: {inputs}"]
        info = [{"modalities": sorted(r[p])} for p in points]
        return self.result([(p,) for p in points], 0.9, graph, evidence=evidence, info=info)

    def hints(self) -> list[str]:
        return ["run the modality encoders in parallel (on different workers when they are large)",
                "fuse late: only the encoders' outputs cross the network"]
