"""A genie-serve killed with SIGKILL and started again re-attaches to the workers that outlived it
(`workers.launcher: addresses`): no fragment is loaded twice, the KV its lost requests held is freed, and it
serves again within seconds."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from genie.auth import new_link_token
from genie.workers.process import spawn_worker

from conftest import HOME, smollm2_config, start_server
from served import post_json, worker_stats

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SERVES_WITHIN_S = 10.0  # from genie-serve's start (its imports done) to ready, as its ready line says
# Wall time from spawn to the first answer: 8.5-12 s here at load 4 on 2 cores, 25 s at load 8, most of it
# Python imports; only a sanity bound. That nothing was reloaded is shown by the workers' load counters.
ANSWERS_WITHIN_S = 60.0
READY_IN = re.compile(r"ready in ([0-9.]+)s")


def _stream_until_killed(url: str, started: threading.Event) -> None:
    """A long streamed completion; returns when the server dies under it."""
    body = json.dumps({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True,
                       "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            for i, _ in enumerate(resp):
                if i == 4:
                    started.set()
    except OSError:
        pass  # the server was killed mid-stream, as intended


def test_a_restarted_server_reattaches_without_reloading_and_frees_lost_kv(tmp_path: Path) -> None:
    token = new_link_token()
    (tmp_path / "link.token").write_text(token + "\n")
    with ThreadPoolExecutor(2) as pool:
        workers = list(pool.map(lambda _: spawn_worker("cpu", 1, token=token, artifact_roots=[str(HOME)]), range(2)))
    addresses = [w.address for w in workers]
    config = smollm2_config("float32", workers={"launcher": "addresses", "addresses": addresses,
                                                "link_token_file": str(tmp_path / "link.token")})
    del config["workers"]["launch"]
    try:
        began = time.monotonic()
        first = start_server(config, tmp_path)
        assert post_json(f"{first.url}/v1/chat/completions",
                         {"model": "smollm2", "messages": QUESTION, "max_tokens": 24, "temperature": 0})[0] == 200
        fresh = time.monotonic() - began
        loaded = [s.fragments_loaded for s in worker_stats(addresses, token)]
        assert loaded == [1, 1]

        streaming = threading.Event()
        reader = threading.Thread(target=_stream_until_killed, args=(first.url, streaming), daemon=True)
        reader.start()
        assert streaming.wait(60), "the stream never started"
        first._popen.kill()  # SIGKILL: no drain, no Release of the running request
        first._popen.wait()
        reader.join(30)
        left = [f for s in worker_stats(addresses, token) for f in s.fragments]
        assert sum(f.sequences for f in left) == 1, "the killed server's request should still hold its KV"
        assert sum(f.kv_blocks_cached for f in left) > 0, "its prompt blocks should still be cached"

        began = time.monotonic()
        second = start_server(config, tmp_path)
        attached = [f for s in worker_stats(addresses, token) for f in s.fragments]
        status, body = post_json(f"{second.url}/v1/chat/completions",
                                 {"model": "smollm2", "messages": QUESTION, "max_tokens": 24, "temperature": 0})
        took = time.monotonic() - began
        ready_in = float(READY_IN.search(second.ready_line).group(1))
        print(f"restarted genie-serve answered {took:.1f} s after it was spawned (ready in {ready_in:.1f} s); "
              f"the first start, loading the fragments, took {fresh:.1f} s")
        assert status == 200 and "Paris" in body["choices"][0]["message"]["content"], body
        after = worker_stats(addresses, token)
        assert [s.fragments_loaded for s in after] == loaded, "a fragment the worker held was loaded again"
        # Freed: the lost request's sequence, and the cached blocks whose names only the killed router knew.
        assert [(f.sequences, f.kv_blocks_used, f.kv_blocks_cached) for f in attached] == [(0, 0, 0)] * 2
        assert sum(f.sequences for s in after for f in s.fragments) == 0
        assert ready_in < SERVES_WITHIN_S and took < ANSWERS_WITHIN_S, (ready_in, took)
        assert second.stop(grace=30) == 0, second.log_tail()
    finally:
        for worker in workers:
            worker.stop()
