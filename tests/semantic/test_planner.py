"""plan(): replicas, pipelines, disaggregation, branch-parallel and recsys splits, with reasons and costs."""

from __future__ import annotations

import json

import pytest
from semantic_builders import GiB
from semantic_zoo import ZOO
from transformers import LlamaConfig

from genie.semantic import ClusterSpec, Plan, PlanOptions, WorkerSpec, analyze, plan, skeleton_from_hf_config


def workers(n: int, memory: float, flops: float = 1e12, bandwidth: float = 50e9) -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", int(memory), flops, bandwidth) for i in range(n)), 10e9)


@pytest.fixture(scope="module")
def big_llama():
    """Llama-2-7B widths with 8 layers: 1.9 B parameters, 7.4 GiB in fp32. No weights are built."""
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=8, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    model, inputs = skeleton_from_hf_config(config)
    return analyze(model, inputs, name="llama-8l")


@pytest.fixture(scope="module")
def clip_profile():
    model, inputs = ZOO["clip"][0]()
    return analyze(model, inputs, name="clip")


@pytest.fixture(scope="module")
def dlrm_profile():
    model, inputs = ZOO["dlrm"][0]()
    return analyze(model, inputs, name="dlrm")


def test_smollm2_on_two_4gib_workers_is_two_replicas(smollm2_profile):
    p = plan(smollm2_profile, workers(2, 4 * GiB))
    assert p.strategy == "replicas"
    assert len(p.fragments) == 2 and {f.worker for f in p.fragments} == {"w0", "w1"}
    for f in p.fragments:
        assert (f.layer_start, f.layer_end, f.has_embedding, f.has_head) == (0, 30, True, True)
        assert f.kv_bytes_per_token == 46080 and f.memory_bytes <= 4 * GiB
        assert f.reason
    assert p.transfers == []
    assert p.predicted.unit == "tokens/s" and p.predicted.throughput > 0 and p.predicted.latency_s > 0
    assert p.reasons and "replica" in p.reasons[0]


def test_one_worker_is_a_single_replica(smollm2_profile):
    assert plan(smollm2_profile, workers(1, 4 * GiB)).strategy == "single"


def test_llama_too_big_for_one_worker_is_a_pipeline(big_llama):
    options = PlanOptions(batch=1, context_tokens=1024, prompt_tokens=128)
    cluster = workers(4, 4 * GiB)
    p = plan(big_llama, cluster, options)
    assert p.strategy == "pipeline"
    stages = p.replicas()[0]
    assert len(stages) >= 2
    assert stages[0].has_embedding and stages[-1].has_head
    assert [f.layer_start for f in stages] == [0, *[f.layer_end for f in stages[:-1]]]
    assert stages[-1].layer_end == 8
    for f in p.fragments:
        assert f.memory_bytes <= options.usable(cluster.worker(f.worker).memory_bytes)
    hidden_bytes = 4096 * 4
    assert len(p.transfers) == len(stages) - 1
    for t in p.transfers:
        assert t.what == "hidden states"
        assert t.bytes_per_token == hidden_bytes
        assert t.bytes_per_request == hidden_bytes * options.prompt_tokens
    assert "pipeline" in p.reasons[0]


def test_tied_head_on_a_later_stage_carries_the_embedding_table():
    from semantic_builders import tiny_llama

    model, inputs = tiny_llama(tie_word_embeddings=True, vocab_size=4096, num_hidden_layers=4)
    profile = analyze(model, inputs)
    layer = profile.llm.layer_param_bytes
    table = profile.llm.embedding_param_bytes
    options = PlanOptions(batch=1, context_tokens=16, memory_headroom=0.0)
    # each worker holds the table and about two layers, never the whole model
    p = plan(profile, workers(3, table + 2.5 * layer + 4096), options)
    stages = p.replicas()[0]
    assert p.strategy == "pipeline" and len(stages) >= 2
    assert stages[-1].param_bytes >= table  # the LM head multiplies by the embedding table


def test_model_larger_than_the_cluster_is_refused_with_the_numbers(big_llama):
    with pytest.raises(ValueError, match=r"needs \d+\.\d+ GiB .* offer"):
        plan(big_llama, workers(2, 2 * GiB))


def test_clip_on_two_workers_runs_its_encoders_in_parallel(clip_profile):
    p = plan(clip_profile, workers(2, 4 * GiB))
    assert p.strategy == "branch_parallel"
    by_role = {f.role: f for f in p.fragments}
    image, text = by_role["branch:image"], by_role["branch:text"]
    assert image.worker != text.worker
    assert any("vision_model" in n for n in image.nodes) and not any("text_model" in n for n in image.nodes)
    assert any("text_model" in n for n in text.nodes)
    assert "fusion" in by_role
    assert p.transfers and all(t.bytes_per_request > 0 for t in p.transfers)
    assert p.predicted.unit == "requests/s"


def test_clip_on_one_worker_is_not_split(clip_profile):
    assert plan(clip_profile, workers(1, 4 * GiB)).strategy == "single"


def test_recsys_fits_so_it_replicates(dlrm_profile):
    assert plan(dlrm_profile, workers(2, GiB)).strategy == "replicas"


def test_recsys_split_when_memory_demands_it(dlrm_profile):
    options = PlanOptions(batch=1)
    cluster = ClusterSpec((WorkerSpec("fast", "cuda", 300_000, 10e12, 900e9),
                           WorkerSpec("big0", "cpu", 400_000, 1e12, 50e9),
                           WorkerSpec("big1", "cpu", 400_000, 1e12, 50e9)), 10e9)
    p = plan(dlrm_profile, cluster, options)
    assert p.strategy == "recsys_split"
    dense = next(f for f in p.fragments if f.role == "dense")
    assert dense.worker == "fast"
    tables = [n for f in p.fragments if f.role == "sparse" for n in f.nodes]
    assert sorted(tables) == sorted(b.name for b in dlrm_profile.blocks if b.kind == "sparse")
    used: dict[str, int] = {}
    for f in p.fragments:
        used[f.worker] = used.get(f.worker, 0) + f.memory_bytes
    assert all(used[w.name] <= options.usable(w.memory_bytes) for w in cluster.workers)
    sparse_ids = {f.fragment_id for f in p.fragments if f.role == "sparse"}
    assert {t.src for t in p.transfers if t.dst == "dense"} == sparse_ids  # pooled embeddings to the MLP
    assert all(t.bytes_per_request > 0 for t in p.transfers)


def test_disaggregation_when_replicas_miss_the_tpot_slo(smollm2_profile):
    cluster = ClusterSpec((WorkerSpec("compute", "cuda", 8 * GiB, 100e12, 200e9),
                           WorkerSpec("memory", "cuda", 8 * GiB, 20e12, 2000e9)), 25e9)
    base = PlanOptions(prompt_tokens=2048, output_tokens=64)
    replicas = plan(smollm2_profile, cluster, base)
    forced = plan(smollm2_profile, cluster, PlanOptions(prompt_tokens=2048, output_tokens=64, disaggregate=True))
    assert replicas.strategy == "replicas" and forced.strategy == "disaggregated"
    slo = (replicas.predicted.detail["tpot_effective_s"] + forced.predicted.detail["tpot_batch_s"]) / 2
    p = plan(smollm2_profile, cluster, PlanOptions(prompt_tokens=2048, output_tokens=64, tpot_slo_s=slo))
    assert p.strategy == "disaggregated"
    roles = {f.role: f.worker for f in p.fragments}
    assert roles == {"prefill": "compute", "decode": "memory"}
    (handoff,) = p.transfers
    assert handoff.what == "KV cache handoff" and handoff.bytes_per_token == 0
    assert handoff.bytes_per_request == 46080 * 2048


def test_vision_model_too_big_for_a_worker_is_pipelined(vit_graph):
    from genie.semantic.analyze import analyze_graph

    profile = analyze_graph(vit_graph, "vit-b16")
    cluster = workers(3, 200 * 2**20)
    p = plan(profile, cluster, PlanOptions(batch=1))
    assert p.strategy == "pipeline" and len(p.fragments) >= 2
    placed = [n for f in sorted(p.fragments, key=lambda f: f.stage) for n in f.nodes]
    assert placed == [b.name for b in profile.blocks]
    assert all(f.memory_bytes <= 0.9 * 200 * 2**20 for f in p.fragments)
    assert p.transfers and all(t.bytes_per_request > 0 for t in p.transfers)


def test_plans_are_deterministic_and_serialisable(smollm2_profile, clip_profile):
    for profile in (smollm2_profile, clip_profile):
        a = plan(profile, workers(2, 4 * GiB))
        b = plan(profile, workers(2, 4 * GiB))
        assert a == b
        again = Plan.from_dict(json.loads(json.dumps(a.to_dict())))
        assert again == a
        assert again.cluster_fingerprint == workers(2, 4 * GiB).fingerprint()
        assert "\n" not in a.summary() and a.strategy in a.summary()


def test_bad_arguments_are_refused(smollm2_profile):
    with pytest.raises(TypeError, match="Profile"):
        plan({"workload_type": "llm"}, workers(1, GiB))
    with pytest.raises(TypeError, match="ClusterSpec"):
        plan(smollm2_profile, [WorkerSpec("w", "cpu", GiB, 1e12, 1e9)])
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        PlanOptions(batch=0)
