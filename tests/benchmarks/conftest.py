"""Fixtures for genie-bench tests: stand-in OpenAI-compatible servers on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from bench_standin import Behaviour, StandIn


@pytest.fixture
def standin() -> Iterator[Callable[..., StandIn]]:
    """Start stand-in servers with the given Behaviour fields; all are stopped at the end of the test."""
    started: list[StandIn] = []

    def start(**behaviour) -> StandIn:
        server = StandIn(Behaviour(**behaviour)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
