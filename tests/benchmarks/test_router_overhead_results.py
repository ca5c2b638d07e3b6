"""router_overhead.py and worker_env.py write what they print: the results JSON holds each path's numbers and
the overheads computed from the same samples."""

from __future__ import annotations

import json

from genie.benchmarks.router_overhead import PATHS, TPOT_TARGET, path_stats, summary, write_results


def _paths(itl_ms: list[float]) -> list[tuple[list[float], list[float]]]:
    """Four paths whose gaps are all itl_ms[i] ms and whose TTFT is 10x that."""
    return [([10 * ms / 1000] * 3, [ms / 1000] * 9) for ms in itl_ms]


def test_summary_splits_the_overhead_between_the_rpc_and_the_router() -> None:
    found = summary(_paths([10.0, 11.0, 11.5, 12.0]))  # engine, stream, unary, served
    assert abs(found["itl_overhead_ms"] - 2.0) < 1e-9
    assert abs(found["rpc_itl_overhead_ms"] - 1.0) < 1e-9
    assert abs(found["router_http_itl_overhead_ms"] - 1.0) < 1e-9
    assert abs(found["stream_minus_unary_itl_ms"] + 0.5) < 1e-9
    assert abs(found["served_over_engine_tpot"] - 1.2) < 1e-9
    assert not found["meets_tpot_target"]
    assert summary(_paths([10.0, 10.5, 10.5, 11.0]))["meets_tpot_target"] == (1.1 <= TPOT_TARGET)


def test_the_results_json_holds_the_printed_numbers(tmp_path) -> None:
    paths = _paths([10.0, 11.0, 11.5, 12.0])
    out = write_results(tmp_path / "deep" / "router-overhead-x.json", {
        "paths": {name: path_stats(*p) for name, p in zip(PATHS, paths)}, "summary": summary(paths)})
    data = json.loads(out.read_text())
    assert data["paths"]["engine in-process"]["itl_p50_ms"] == 10.0
    assert data["paths"]["HTTP -> router -> gRPC -> worker"]["ttft_p50_ms"] == 120.0
    assert data["paths"]["engine in-process"]["gaps"] == 9
    assert data["summary"]["served_over_engine_tpot"] == summary(paths)["served_over_engine_tpot"]


def test_cpu_is_counted_over_every_thread_and_summed_per_token() -> None:
    import os
    import time

    from genie.benchmarks.router_overhead import CpuMeter, cpu_summary, process_cpu_s

    meter = CpuMeter({"me": lambda: process_cpu_s(os.getpid())})
    meter.start()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn 50 ms of this thread's CPU
        pass
    meter.stop(10)
    assert 4.0 <= meter.per_token_ms()["me"] <= 50.0  # 5 ms a token, give or take the machine
    found = cpu_summary([{"engine in-process": 10.0}, {}, {}, {"genie-serve": 2.0, "worker": 10.5}])
    assert found == {"served_over_engine_cpu": 1.25, "server_cpu_ms_per_token": 2.0, "worker_cpu_over_engine_ms": 0.5}
