"""Stateless fragments: whole models (HF encoders, vision models, `py:` factories) run by Infer, no KV cache."""

from genie.workers.stateless.fragment import StatelessFragment, load_stateless

__all__ = ["StatelessFragment", "load_stateless"]
