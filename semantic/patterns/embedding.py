"""Embedding lookups: dense nn.Embedding and pooled nn.EmbeddingBag tables."""

from __future__ import annotations

import networkx as nx

from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.walk import nodes_of


class EmbeddingPattern(PatternPlugin):
    name = "embedding"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        lookups = nodes_of(graph, "embedding", "embedding_bag")
        if not lookups:
            return None
        params = graph.graph["params"]
        info, tables = [], {}
        for n in lookups:
            d = graph.nodes[n]
            table = d["params"][0] if d["params"] else ""
            shape = params[table].shape if table in params else (0, 0)
            tables[table] = params[table].nbytes if table in params else 0
            info.append({"table": table, "rows": shape[0], "dim": shape[-1], "bag": d["kind"] == "embedding_bag"})
        bags = sum(i["bag"] for i in info)
        evidence = [f"{len(tables)} embedding tables ({bags} pooled EmbeddingBag lookups), "
                    f"{sum(tables.values()) / 2**20:.1f} MiB"]
        return self.result([(n,) for n in lookups], 0.99, graph, evidence=evidence, info=info)

    def hints(self) -> list[str]:
        return ["lookups are memory-bound: place large tables by memory, shard them by table or by row",
                "cache hot rows; batch lookups"]
