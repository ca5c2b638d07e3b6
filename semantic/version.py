"""Bump ANALYZER_VERSION whenever analysis output changes: the registry keys cached profiles by it."""

ANALYZER_VERSION = "2"
