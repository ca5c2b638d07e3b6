"""Semantic analysis: capture, patterns, workload classification, costs, planning."""
