"""genie-bench: serving benchmarks with baselines measured in the same run."""
