"""The scheduler and the worker contract are pure: importing them loads no torch and no engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "grpc", "aiohttp", "numpy", "genie.workers.engine")


@pytest.mark.parametrize("module", ["genie.serving.scheduler", "genie.workers.contract", "genie.workers.blind"])
def test_importing_loads_nothing_heavy(module: str) -> None:
    probe = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"


def test_the_main_contract_has_no_whole_kv_fields() -> None:
    from genie.workers.contract import SeqResult, SeqStep

    for cls in (SeqStep, SeqResult):
        assert not {"kv", "return_kv"} & set(cls.__dataclass_fields__), cls
