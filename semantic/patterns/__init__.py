"""Pattern plugins: the contract, the built-ins and the registry that runs them."""

from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.patterns.registry import ENTRY_POINT_GROUP, ENV_VAR, PatternRegistry, PatternRun

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "PatternMatch", "PatternPlugin", "PatternRegistry", "PatternRun"]
