"""Bump ANALYZER_VERSION whenever analysis output changes: the registry keys cached profiles by it."""

ANALYZER_VERSION = "3"  # 3: blocks count their ops, module calls, lookups and activation traffic
