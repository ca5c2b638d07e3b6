"""The pattern registry: built-in plugins plus external ones, run over a graph with per-pattern timing.

External plugins come from the `genie.patterns` entry-point group and from
GENIE_PATTERN_PLUGINS=module:Name[,module:Name...]; both are read when a registry is built, never at import.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import time
from dataclasses import dataclass

import networkx as nx

from genie.semantic.patterns.attention import AttentionPattern
from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.patterns.conv import ConvActivationPattern
from genie.semantic.patterns.crossmodal import CrossModalFusionPattern
from genie.semantic.patterns.embedding import EmbeddingPattern
from genie.semantic.patterns.kvcache import KVCachePattern
from genie.semantic.patterns.mlp import GatedMLPPattern, MLPPattern
from genie.semantic.patterns.norm import BatchNormPattern, NormPattern, RMSNormPattern
from genie.semantic.patterns.qkv import ParallelQKVPattern
from genie.semantic.patterns.residual import ResidualPattern

ENV_VAR = "GENIE_PATTERN_PLUGINS"
ENTRY_POINT_GROUP = "genie.patterns"
BUILTINS: tuple[type[PatternPlugin], ...] = (
    AttentionPattern, MLPPattern, GatedMLPPattern, ConvActivationPattern, ResidualPattern, EmbeddingPattern,
    NormPattern, RMSNormPattern, BatchNormPattern, ParallelQKVPattern, KVCachePattern, CrossModalFusionPattern,
)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PatternRun:
    matches: dict[str, PatternMatch]
    timings_ms: dict[str, float]  # per plugin, including the ones that found nothing
    errors: dict[str, str]  # plugin name -> what went wrong; the other plugins still ran

    def timing_report(self) -> str:
        rows = sorted(self.timings_ms.items(), key=lambda kv: -kv[1])
        width = max((len(n) for n, _ in rows), default=8)
        lines = [f"{'pattern':<{width}}  {'ms':>8}  count"]
        for name, ms in rows:
            count = self.matches[name].count if name in self.matches else 0
            lines.append(f"{name:<{width}}  {ms:8.2f}  {count}")
        lines.append(f"{'total':<{width}}  {sum(self.timings_ms.values()):8.2f}")
        return "\n".join(lines)


class PatternRegistry:
    def __init__(self, plugins: list[PatternPlugin] | None = None) -> None:
        self._plugins: dict[str, PatternPlugin] = {}
        for p in plugins or []:
            self.register(p)

    @classmethod
    def default(cls) -> PatternRegistry:
        """Built-ins, then entry-point plugins, then GENIE_PATTERN_PLUGINS (later names replace earlier ones)."""
        reg = cls([p() for p in BUILTINS])
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            reg.register(_instantiate(ep.load(), f"entry point {ep.name} = {ep.value}"))
        for spec in filter(None, (s.strip() for s in os.environ.get(ENV_VAR, "").split(","))):
            reg.register(_instantiate(load_spec(spec), f"{ENV_VAR} entry {spec!r}"))
        return reg

    def register(self, plugin: PatternPlugin) -> None:
        if not isinstance(plugin, PatternPlugin):
            raise TypeError(f"pattern plugins must subclass genie.semantic.patterns.PatternPlugin, got {plugin!r}")
        if not plugin.name:
            raise ValueError(f"pattern plugin {type(plugin).__name__} has no name; set the class attribute `name`")
        self._plugins[plugin.name] = plugin

    @property
    def names(self) -> list[str]:
        return list(self._plugins)

    def get(self, name: str) -> PatternPlugin:
        return self._plugins[name]

    def run(self, graph: nx.DiGraph) -> PatternRun:
        matches, timings, errors = {}, {}, {}
        for name, plugin in self._plugins.items():
            start = time.perf_counter()
            try:
                found = plugin.match(graph)
            except Exception as error:  # noqa: BLE001 - one broken plugin must not lose the whole analysis
                errors[name] = f"{type(error).__name__}: {error}"
                log.warning("pattern plugin %r failed and was skipped: %s", name, errors[name])
                found = None
            timings[name] = (time.perf_counter() - start) * 1e3
            if found is not None and found.count:
                matches[name] = found
        return PatternRun(matches, timings, errors)


def load_spec(spec: str) -> object:
    """'package.module:ClassName' -> the object it names, with an error that says what to fix."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{ENV_VAR} entries look like 'package.module:ClassName', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{ENV_VAR}: cannot import module {module_name!r} ({error}); is it on PYTHONPATH?") from error
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{ENV_VAR}: module {module_name!r} has no attribute {attr!r}") from None


def _instantiate(obj: object, where: str) -> PatternPlugin:
    plugin = obj() if isinstance(obj, type) else obj
    if not isinstance(plugin, PatternPlugin):
        raise ValueError(f"{where} is not a PatternPlugin (subclass genie.semantic.patterns.PatternPlugin)")
    return plugin
