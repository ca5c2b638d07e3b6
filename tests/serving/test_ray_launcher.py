"""genie-serve with `workers.launcher: ray` on a real local Ray head: SmolLM2 on two worker actors.

One head per module (Ray takes seconds to start on 2 cores), started by this test process and shut down at the
end; genie-serve joins it as a second driver by its address.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from genie.auth import new_link_token

from conftest import HOME, smollm2_config, start_server
from served import get_json

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

BUNDLE_KEY = re.compile(r"(CPU|GPU|memory)_group_\d+_[0-9a-f]+")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ray_head():
    started = time.monotonic()
    ctx = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=0,
                   log_to_driver=False, namespace="genie-test")
    print(f"ray head up in {time.monotonic() - started:.1f} s")
    try:
        yield ctx.address_info["gcs_address"], Path(ctx.address_info["session_dir"])
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def served(ray_head, tmp_path_factory):
    address, session_dir = ray_head
    tmp = tmp_path_factory.mktemp("ray")
    token = new_link_token()
    (tmp / "link.token").write_text(token + "\n")
    config = smollm2_config("float32", workers={"launcher": "ray", "ray_address": address, "launch": 2,
                                     "link_token_file": str(tmp / "link.token"), "restart_backoff_s": 0.5,
                                     "restart_backoff_max_s": 2})
    server = start_server(config, tmp)
    try:
        yield server, config, token, session_dir
    finally:
        assert server.stop(grace=30) == 0, server.log_tail()


def _actors() -> list:
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "WorkerActor"), ("state", "=", "ALIVE")], detail=True)


def _planned_memory(config: dict) -> dict[str, int]:
    """What the plan in the registry reserves per worker (the plan genie-serve loaded, same cluster)."""
    from genie.config import parse_config
    from genie.registry.cluster import cluster_from_config
    from genie.registry.store import Registry

    cfg = parse_config({**config, "registry": {"home": str(HOME)}})
    with Registry.from_config(cfg.registry) as registry:
        version = registry.ensure(cfg.model, progress=False)
        plan = registry.get_or_make_plan(version, cluster_from_config(cfg))
        assert registry.stats.plans_computed == 0, "the test should read the plan genie-serve made, not a new one"
    return {w: sum(f.memory_bytes for f in plan.fragments_on(w)) for w in {f.worker for f in plan.fragments}}


def _workers(url: str) -> dict[str, tuple[str, str]]:
    """worker name -> (its address, its replica's state), from /health."""
    _, body = get_json(f"{url}/health", timeout=5)
    return {w["name"]: (w["address"], r["state"]) for r in body["models"][0]["replicas"] for w in r["workers"]}


def test_serves_paris_on_two_ray_actors_with_the_planned_resources(served) -> None:
    import openai
    from ray.util.state import list_placement_groups

    server, config, token, session_dir = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    out = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in out.choices[0].message.content, out.choices[0].message.content

    actors = _actors()
    planned = _planned_memory(config)
    assert sorted(a.name for a in actors) == ["genie-worker-0", "genie-worker-1"]
    groups = {g.placement_group_id: g for g in list_placement_groups(detail=True)}
    for actor in actors:
        worker = actor.name.removeprefix("genie-")
        want = {"CPU": 1.0, "memory": float(planned[worker])}
        # Inside a placement group Ray renames what an actor asks for after its bundle: CPU_group_<i>_<pg id>.
        asked = {m.group(1): v for k, v in actor.required_resources.items() if (m := BUNDLE_KEY.fullmatch(k))}
        assert asked == want, actor.required_resources
        group = groups[actor.placement_group_id]  # one per replica: SmolLM2 fits a worker, so one worker each
        assert group.state == "CREATED", group
        assert ray.util.placement_group_table()[actor.placement_group_id]["strategy"] == "PACK"
        assert [b["unit_resources"] for b in group.bundles] == [want], group.bundles
    # The link credential is in no actor record Ray shows, and in none of its session's logs.
    assert token not in str(actors)
    scanned = [p.read_bytes() for p in (session_dir / "logs").rglob("*") if p.is_file()]
    assert any(b"genie-worker ready on" in text for text in scanned), "the actors' logs were not among those read"
    assert not [text for text in scanned if token.encode() in text]


def test_a_killed_actor_comes_back_and_its_replica_rejoins(served) -> None:
    import openai

    server = served[0]
    victim = {a.name: a for a in _actors()}["genie-worker-1"]
    old_address = _workers(server.url)["worker-1"][0]
    started = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    while True:  # back: the replica serves again, from the genie-worker of the restarted actor
        workers = _workers(server.url)
        address, state = workers["worker-1"]
        if address != old_address and {s for _, s in workers.values()} == {"ready"}:
            break
        assert time.monotonic() < started + 60, f"not back 60 s after the kill: {workers}"
        time.sleep(0.5)
    print(f"actor restarted and replica ready again {time.monotonic() - started:.1f} s after the kill")
    after = {a.name: a for a in _actors()}["genie-worker-1"]
    assert after.pid != victim.pid and after.num_restarts == 1, after
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    for _ in range(2):  # both replicas serve (the router spreads requests over them)
        out = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
        assert "Paris" in out.choices[0].message.content
