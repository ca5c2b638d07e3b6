"""genie-serve: inference serving with a planner that understands what a model is."""

__version__ = "0.1.0"
