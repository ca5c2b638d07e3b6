"""`genie-bench serve --dataset prefix|multiturn` and the prefix-cache hit rate, against stand-in servers."""

from __future__ import annotations

from collections import defaultdict

from bench_helpers import only_result, run_cli
from test_bench_serve_cli import serve_args


def test_prefix_dataset_reports_the_servers_hit_rate(standin, tmp_path):
    server = standin(prefix_cache=True)
    proc = run_cli(*serve_args(server.url, tmp_path, "--dataset", "prefix", "--prefix-len", "60", "--num-prompts",
                               "6", "--concurrency", "1", "--output-len", "4", "--ignore-eos"))
    assert proc.returncode == 0, proc.stderr
    doc = only_result(tmp_path)
    assert doc["config"]["dataset"] == "prefix" and doc["config"]["prefix_len"] == 60
    systems = {b["messages"][0]["content"] for b in server.bodies}
    questions = {b["messages"][1]["content"] for b in server.bodies}
    assert len(server.bodies) == 6 and len(systems) == 1 and len(questions) == 6
    s = doc["levels"][0]["summary"]
    assert s["prefix_cache_query_tokens"] == server.cache_queries > 0
    assert s["prefix_cache_hit_tokens"] == server.cache_hits
    assert 0.5 < s["prefix_cache_hit_rate"] == server.cache_hits / server.cache_queries < 1
    assert f"{s['prefix_cache_hit_rate']:.1%}" in proc.stdout
    assert "one system prompt of ~60 tokens" in proc.stdout


def test_without_counters_the_hit_rate_is_na(standin, tmp_path):
    server = standin()
    proc = run_cli(*serve_args(server.url, tmp_path, "--concurrency", "2", "--num-prompts", "4", "--output-len", "2"))
    assert proc.returncode == 0, proc.stderr
    s = only_result(tmp_path)["levels"][0]["summary"]
    assert s["prefix_cache_hit_rate"] is None and s["prefix_cache_query_tokens"] is None
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("prefix cache hit rate")]
    assert row.split()[-1] == "n/a"


def test_multiturn_resends_the_replies_the_server_gave(standin, tmp_path):
    server = standin(token_delay_s=0.001)
    proc = run_cli(*serve_args(server.url, tmp_path, "--dataset", "multiturn", "--turns", "3", "--num-prompts", "4",
                               "--concurrency", "2", "--prefix-len", "30", "--output-len", "3", "--ignore-eos"))
    assert proc.returncode == 0, proc.stderr
    [level] = only_result(tmp_path)["levels"]
    assert level["summary"]["completed"] == 12 and len({r["prompt_id"] for r in level["requests"]}) == 12
    by_conversation = defaultdict(list)
    for body, reply in zip(server.bodies, server.replies):
        by_conversation[body["messages"][0]["content"]].append((body, reply))
    assert len(by_conversation) == 4
    for turns in by_conversation.values():
        assert len(turns) == 3
        for k, (body, _) in enumerate(turns):
            assert [m["role"] for m in body["messages"]] == ["system", *["user", "assistant"] * k, "user"]
            sent_back = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
            assert sent_back == [reply for _, reply in turns[:k]]
            assert all(r.startswith("r") and r.count("t") == 3 for r in sent_back)


def test_a_failed_turn_ends_its_conversation(standin, tmp_path):
    server = standin(fail_every=2)  # requests 0 and 2 fail
    proc = run_cli(*serve_args(server.url, tmp_path, "--dataset", "multiturn", "--turns", "3", "--num-prompts", "2",
                               "--concurrency", "1", "--prefix-len", "20", "--output-len", "2"))
    assert proc.returncode == 0, proc.stderr
    s = only_result(tmp_path)["levels"][0]["summary"]
    assert (s["requests"], s["completed"], s["errors"]) == (6, 1, 5)
    assert len(server.bodies) == 3
    skipped = [e for e in s["error_messages"] if e["message"].startswith("not sent")]
    assert sum(e["count"] for e in skipped) == 3
