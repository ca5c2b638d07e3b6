"""Several processes on one registry (PostgreSQL, or one SQLite file): a model registered by two at once is
imported and stored once and analysed once, and each sees what the other registered without reopening."""

from __future__ import annotations

import threading
from pathlib import Path

from genie.config import ModelConfig
from genie.registry.store import Registry


def test_two_registries_registering_one_model_at_once_analyse_it_once(db_url: str, home: Path, llama_dir: Path) -> None:
    model = ModelConfig(name="tiny", source=str(llama_dir), register_if_missing=True)
    first, second = Registry.open(db_url, home), Registry.open(db_url, home)
    bystander = Registry.open(db_url, home)  # a third process, open before the model existed
    go = threading.Barrier(2)
    found: dict[str, object] = {}

    def start(reg: Registry, who: str) -> None:
        go.wait()  # both ask for the missing model together, as two genie-serve processes starting at once
        found[who] = reg.ensure(model, progress=False)

    try:
        threads = [threading.Thread(target=start, args=(r, w)) for r, w in ((first, "a"), (second, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        a, b = found["a"], found["b"]
        assert (a.ref, a.content_hash) == (b.ref, b.content_hash), "both should serve the one version stored"
        assert sorted([a.created, b.created]) == [False, True], "one registered it, the other found it"
        assert first.stats.profiles_computed + second.stats.profiles_computed == 1
        assert bystander.analysis_counts(a)["profile"] == 1, "the registry's own count agrees"
        assert [v.version for v in bystander.versions("tiny")] == [1]
    finally:
        for reg in (first, second, bystander):
            reg.close()
